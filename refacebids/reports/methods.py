"""Methods text of refaced images, for reports, papers and a dataset's README.

In the manner of fMRIPrep's citation boilerplate: a paragraph saying what was done,
with versions, template and registration settings, then the references. The text of
an output is built from what its sidecars recorded (``RefacebidsProvenance``), so that
reports regenerated later by another version still describe what was done.
"""

from __future__ import annotations

import re

from .. import __version__
from ..core.registration import WORKING_RESOLUTION_MM, levels_mm
from ..core.replace import MAX_SKIN_OFFSET_MM, SKIN_OFFSET_MM
from ..core.warp import PROTECT_MARGIN_MM

#: The works the methods text cites, in the order of first citation.
REFERENCES = {
    "bidsapps": "Gorgolewski KJ, Alfaro-Almagro F, Auer T, et al. BIDS apps: Improving ease of "
    "use, accessibility, and reproducibility of neuroimaging data analysis methods. PLoS "
    "Comput Biol. 2017;13(3):e1005209. doi:10.1371/journal.pcbi.1005209",
    "nipype": "Gorgolewski K, Burns CD, Madison C, et al. Nipype: a flexible, lightweight and "
    "extensible neuroimaging data processing framework in Python. Front Neuroinform. "
    "2011;5:13. doi:10.3389/fninf.2011.00013",
    "icbm152": "Fonov V, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL. Unbiased "
    "average age-appropriate atlases for pediatric studies. NeuroImage. 2011;54(1):313-327. "
    "doi:10.1016/j.neuroimage.2010.07.033",
    "ants": "Tustison NJ, Cook PA, Holbrook AJ, et al. The ANTsX ecosystem for quantitative "
    "biological and medical imaging. Sci Rep. 2021;11:9068. doi:10.1038/s41598-021-87564-6",
    "syn": "Avants BB, Epstein CL, Grossman M, Gee JC. Symmetric diffeomorphic image "
    "registration with cross-correlation: evaluating automated labeling of elderly and "
    "neurodegenerative brain. Med Image Anal. 2008;12(1):26-41. "
    "doi:10.1016/j.media.2007.06.004",
    "mattes": "Mattes D, Haynor DR, Vesselle H, Lewellen TK, Eubank W. PET-CT image "
    "registration in the chest using free-form deformations. IEEE Trans Med Imaging. "
    "2003;22(1):120-128. doi:10.1109/TMI.2002.808360",
}
CITED = {key: number for number, key in enumerate(REFERENCES, start=1)}

#: Registration settings of this version, for a paragraph written before any output
#: exists (the workflow's description); outputs use the settings they recorded.
CURRENT_REGISTRATION = {
    "software": "antspyx",
    "stages": ["Rigid", "Affine", "SyN"],
    "metric": "Mattes mutual information",
    "resolution_mm": WORKING_RESOLUTION_MM,
    "levels_mm": levels_mm(),
    "initialisation": "centres of mass",
}


def methods_paragraph(modality: str, template_name: str, *, version: str = __version__,
                      registration: dict | None = None, template_sha256: str | None = None) -> str:
    """What was done to images of one or more modalities, ready for a paper.

    Parameters
    ----------
    modality : str
        BIDS suffix, or several joined (``"T1w and T2w"``).
    template_name : str
    version : str
        refacebids version that refaced the images.
    registration : dict, optional
        The registration settings a sidecar recorded (``RefacebidsProvenance.Registration``);
        by default those of this version.
    template_sha256 : str, optional
        Checksum of the template's head image, when recorded.

    Returns
    -------
    str
        Plain text, lines wrapped; references as ``[n]`` (see :data:`REFERENCES`).
    """
    settings = {**CURRENT_REGISTRATION, **(registration or {})}
    # Transform names as in a sentence; SyN keeps its capitals.
    stages = [stage if stage == "SyN" else stage.lower()
              for stage in settings.get("stages") or ["Rigid", "Affine", "SyN"]]
    syn_iterations = settings.get("syn_iterations")
    iterations = (f" ({'x'.join(map(str, syn_iterations))} SyN iterations)"
                  if syn_iterations else "")
    checksum = f" (SHA-256 of its head image {template_sha256[:12]}...)" if template_sha256 else ""
    # The embedded template and TemplateFlow's MNI152 templates are ICBM152 averages.
    origin = (f", built from the ICBM152 average [{CITED['icbm152']}]"
              if template_name.startswith("MNI152") else "")
    return f"""\
Faces were replaced with *refacebids* {version} [{CITED['bidsapps']}, {CITED['nipype']}]. \
The {modality} image was registered to the {template_name} full-head \
template{origin}{checksum}, with \
{settings['software']} [{CITED['ants']}]: {_stage_levels(stages, settings)}{iterations}, all with \
{settings['metric']} [{CITED['mattes']}]. The template's face, forehead, cheeks, ears, \
teeth and jaw labels, and the air in which wrapped face parts appear, were carried to the \
image; an intracranial region grown by {PROTECT_MARGIN_MM:g} mm was protected and left \
byte-identical. The template face, placed by the head's affine alignment and raised by \
{SKIN_OFFSET_MM:g} mm of soft tissue (up to {MAX_SKIN_OFFSET_MM:g} mm where the subject's own face \
stood out as far), was drawn in the image's own contrast (a lookup \
table learned from the subject's tissue outside the face, and the subject's own skin \
profile for the new skin) with noise matching the image's, and feathered into the \
surrounding tissue. Every voxel outside the replaced \
region was verified to be unchanged, and an output failing this check was withheld.\
{_modality_sentences(modality)}{THROUGH_ANAT_METHODS if settings.get("path") == "anat" else ""}
"""


def _stage_levels(stages: list[str], settings: dict) -> str:
    """Which transforms were fitted at which resolutions, as recorded.

    Records of this version give the levels of each stage (``levels_mm``); earlier ones
    a rigid resolution (``rigid_resolution_mm``) and one for the rest.
    """
    rigid, rest = stages[0], " and ".join(stages[1:])
    syn = f"{rest} [{CITED['syn']}]"
    if "rigid_resolution_mm" in settings:
        return (f"{rigid} at {settings['rigid_resolution_mm']:g} mm from the {settings['initialisation']}, "
                f"then {syn} at {settings['resolution_mm']:g} mm")
    # A resolution repeated with less smoothing is one resolution in words.
    levels = [" and ".join(f"{level:g}" for level in sorted(set(settings["levels_mm"][name]), reverse=True)) + " mm"
              for name in settings["stages"]]
    shared = f" at {levels[-1]}" if len(set(levels[1:])) == 1 else ""
    rest_levels = shared or " at " + ", ".join(levels[1:])
    return (f"{rigid} at {levels[0]} from the {settings['initialisation']}, then {syn}{rest_levels}, "
            f"coarse to fine on a {settings['resolution_mm']:g} mm working image")


#: What PET and CT add to the paragraph (refacebids.modalities).
MODALITY_METHODS = {
    "pet": (
        " The PET was registered on its frames' mean weighted by frame duration, on a "
        "logarithmic activity scale; one transform served every frame, and each frame's face "
        "was drawn with that frame's own uptake and count-dependent noise."
    ),
    "ct": (
        " The CT was registered as a pseudo-T1w of its Hounsfield units; the face was drawn "
        "from a pseudo-CT of the template in the CT's own HU (within its range), and teeth "
        "and dental metal near the jaw were replaced."
    ),
}


#: Said of an image registered through its session's T1w (``--pet-anat auto``).
THROUGH_ANAT_METHODS = (
    " The image was aligned rigidly to the T1w of its session (antspyx, Mattes mutual "
    f"information, at {WORKING_RESOLUTION_MM:g} mm), and the template reached it through the "
    "T1w's registration."
)


def _modality_sentences(modality: str) -> str:
    suffixes = set(re.findall(r"[A-Za-z0-9*]+", modality))
    return "".join(text for suffix, text in MODALITY_METHODS.items() if suffix in suffixes)


def image_methods(modality: str, provenance: dict) -> str:
    """:func:`methods_paragraph` of one refaced image, from its recorded provenance."""
    template = provenance.get("Template") or {}
    return methods_paragraph(
        modality,
        template.get("Name") or "replacement",
        version=(provenance.get("Software") or {}).get("refacebids") or "(unknown version)",
        registration=_registration_settings(provenance),
        template_sha256=template.get("SHA256"),
    )


def dataset_methods(images: list[tuple[str, dict]]) -> str:
    """The methods paragraph of a whole output, from the provenance of its images.

    Parameters
    ----------
    images : list of (modality, provenance)
        One entry per refaced image.

    Returns
    -------
    str
        One paragraph; a sentence lists what differs between images (versions,
        templates) when they were not all refaced alike.
    """
    if not images:
        return "No image was refaced.\n"
    modalities = sorted({modality for modality, _ in images})
    modality = " and ".join([", ".join(modalities[:-1]), modalities[-1]] if len(modalities) > 1
                            else modalities)
    first = images[0][1]
    text = image_methods(modality, first).replace(f"The {modality} image was",
                                                   f"Each {modality} image was")
    # Which images went through their session's T1w is said once, for all of them.
    text = text.replace(THROUGH_ANAT_METHODS, "")
    through_anat = sorted({m for m, p in images if (p.get("Registration") or {}).get("path") == "anat"})
    if through_anat:
        text = text.rstrip("\n") + (
            f" {' and '.join(through_anat)} images whose session had a T1w were aligned rigidly "
            f"to it (antspyx, Mattes mutual information, at {WORKING_RESOLUTION_MM:g} mm), and "
            "the template reached them through the T1w's registration.\n")
    versions = sorted({(p.get("Software") or {}).get("refacebids") or "?" for _, p in images})
    templates = sorted({(p.get("Template") or {}).get("Name") or "?" for _, p in images})
    if len(versions) > 1 or len(templates) > 1:
        text += (f"Images were refaced by refacebids {', '.join(versions)} with the template(s) "
                 f"{', '.join(templates)}; each image's sidecar records which.\n")
    return text


def citation_markdown(images: list[tuple[str, dict]], n_subjects: int) -> str:
    """README-ready methods text of an output (``logs/CITATION.md``), with references.

    Parameters
    ----------
    images : list of (modality, provenance)
        One entry per refaced image.
    n_subjects : int
        Participants the images belong to.
    """
    references = "\n".join(f"{number}. {REFERENCES[key]}" for key, number in CITED.items())
    return (
        "# Methods: face replacement\n\n"
        f"*Generated by refacebids from the provenance of {len(images)} refaced image(s) of "
        f"{n_subjects} participant(s); paste it into the dataset's README, a data "
        "descriptor or a paper.*\n\n"
        f"{dataset_methods(images)}\n"
        "## References\n\n"
        f"{references}\n"
    )


def _registration_settings(provenance: dict) -> dict:
    registration = dict(provenance.get("Registration") or {})
    # Older sidecars and stand-ins may lack some settings; keep only the ones recorded.
    return {key: value for key, value in registration.items()
            if key in (*CURRENT_REGISTRATION, "rigid_resolution_mm", "syn_iterations", "path") and value}
