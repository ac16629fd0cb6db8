"""The methods paragraph of a refaced image, for reports and data descriptors."""

from __future__ import annotations

from .. import __version__
from ..core.registration import RIGID_RESOLUTION_MM, WORKING_RESOLUTION_MM
from ..core.replace import SKIN_OFFSET_MM
from ..core.warp import PROTECT_MARGIN_MM


def methods_paragraph(modality: str, template_name: str) -> str:
    """What was done to an image, with versions and settings, ready for a paper."""
    return f"""\
Faces were replaced with *refacebids* {__version__}. The {modality} image was registered
to the {template_name} full-head template with antspyx (rigid at
{RIGID_RESOLUTION_MM:g} mm, then affine and SyN at {WORKING_RESOLUTION_MM:g} mm, Mattes
mutual information). The template's face, forehead, cheeks, ears, teeth and jaw labels,
and the air in which wrapped face parts appear, were carried to the image; an
intracranial region grown by {PROTECT_MARGIN_MM:g} mm was protected and left
byte-identical. The template face, placed by the head's affine alignment and raised by
{SKIN_OFFSET_MM:g} mm of soft tissue, was drawn in the image's own contrast (a lookup
table learned from the subject's tissue outside the face) with noise matching the
image's, and feathered into the surrounding tissue.{MODALITY_METHODS.get(modality, "")}
"""


#: What PET and CT add to the paragraph (refacebids.modalities).
MODALITY_METHODS = {
    "pet": (
        "\nThe PET was registered on its frames' mean weighted by frame duration, on a"
        "\nlogarithmic activity scale; one transform served every frame, and each frame's face"
        "\nwas drawn with that frame's own uptake and count-dependent noise."
    ),
    "ct": (
        "\nThe CT was registered in a Hounsfield-unit window to a pseudo-CT drawn from the"
        "\ntemplate; the face was drawn in the CT's own HU (within its range), and teeth and"
        "\ndental metal near the jaw were replaced."
    ),
}
