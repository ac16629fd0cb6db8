"""What the engine does differently for PET and CT than for MRI, in one place.

The modality is the image's BIDS suffix (``pet``, ``ct``, or an MRI suffix), never a
guess from its intensities. Every step below is the MRI behaviour unless the suffix
says otherwise:

========================  =======================  ===========================  ==========================
step                      MRI                      PET (``pet``)                CT (``ct``)
========================  =======================  ===========================  ==========================
reference of a 4D image   mean of the volumes      mean weighted by             mean of the volumes
                                                   ``FrameDuration``
registered image          the reference            ``log(1 + activity/scale)``  pseudo-T1w (core/ct.py)
registration check        scalp over the cranium   scalp over the cranium       strongest edges (face,
                                                                                skull base, airways), and
                                                                                brain values where the
                                                                                template's brain lies deep
drawn template head       T1w                      T1w                          pseudo-CT (core/ct.py)
skin threshold            half-way air to Otsu     the same on the log scale    the same, in HU
noise of the new face     Rician or Gaussian       Gaussian, SD ~ sqrt(signal)  Gaussian, input HU range
========================  =======================  ===========================  ==========================

One transform serves every volume of a 4D image (registration runs once, on the
reference, whatever the number of frames); each volume gets its own lookup table and
noise.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from .core import ct, pet
from .core.image import HeadImage, c_ordered, load_head_image
from .core.registration import EDGES, SCALP
from .core.replace import learn_contrast, reface_volume
from .core.surface import skin_threshold

PET, CT = "pet", "ct"


def load(in_file, modality: str, frame_durations=None) -> HeadImage:
    """Load an image for the engine's steps, its volumes in C order (see ``c_ordered``);
    a dynamic PET's reference is its time-weighted mean."""
    head = load_head_image(in_file)
    head.raw = c_ordered(head.raw)
    if modality == PET and head.raw.ndim == 4:
        head.frame_weights = pet.frame_weights(head.raw.shape[3], frame_durations)
    return head


def registration_inputs(head: HeadImage, template, modality: str):
    """The (I, J, K) image to register and the template head file to register to it."""
    reference = head.reference()
    if modality == PET:
        return pet.registration_image(reference), str(template.t1w)
    if modality == CT:
        return ct.pseudo_t1w(reference), str(template.t1w)
    return reference, str(template.t1w)


def registration_overlap(modality: str) -> str:
    """What the registration check overlaps (:func:`refacebids.core.registration.registration_quality`).

    A CT shows the face, the skull base and the airways as sharply as the skin, and is
    often cut to them (a CT of the sinuses, the face or the skull base): its strongest
    edges; and, since its registered image is the pseudo-T1w of its HU, whose brain
    values are known (:data:`refacebids.core.registration.BRAIN_VALUES`), the check also
    asks for brain where the template's brain lies deep (a CT of the face alone can be
    fitted with the template's cranium on the face). Any other image: the scalp over the
    cranium, which every contrast shows.
    """
    return EDGES if modality == CT else SCALP


def replacement_template(template, modality: str, out_dir):
    """The template whose head is drawn into the image (a pseudo-CT for CT)."""
    return ct.ct_template(template, out_dir) if modality == CT else template


def skin_level(reference: np.ndarray, modality: str) -> float:
    """Intensity separating the head from the air in the image's own units."""
    return pet.skin_level(reference) if modality == PET else skin_threshold(reference)


def extra_replaced(reference: np.ndarray, labels: np.ndarray, affine, zooms, modality: str):
    """Voxels replaced beyond the labels: a CT's teeth, dental metal and metal streaks."""
    if modality == CT:
        return ct.dental_region(reference, labels, affine, zooms)
    return np.zeros(labels.shape, bool)


def contrast_function(modality: str, threads: int = 1):
    """The function learning one volume's contrast outside its face, with
    :func:`refacebids.core.replace.learn_contrast`'s arguments; what it returns is what
    :func:`reface_function`'s function draws with.

    PET and CT have no skin profile to learn (PET skin is blurred, CT skin is absolute
    HU), and PET air no noise floor.
    """
    if modality not in (PET, CT):
        return partial(learn_contrast, threads=threads)

    def learn(volume, training, template_at_training, scalp, scalp_skin_distance, air, tissue, tissue_level):
        del scalp, scalp_skin_distance, tissue_level
        if modality == PET:
            return pet.learn_frame(volume, training, template_at_training, tissue)
        return ct.learn_contrast(volume, training, template_at_training, air, tissue)

    return learn


def reface_function(modality: str, zooms, template_air: float, template_subcutaneous: float, threads: int = 1):
    """The function drawing one volume's new face in its contrast (from
    :func:`contrast_function`), with :func:`refacebids.core.replace.reface_volume`'s arguments.

    PET and CT draw the raised template itself: subcutaneous tissue under the raised
    skin and air beyond it (``template_air`` and ``template_subcutaneous``, template
    units). MRI's drawing runs its filters on ``threads``.
    """
    if modality == PET:
        draw = partial(pet.reface_frame, zooms=zooms)
    elif modality == CT:
        draw = ct.reface_volume
    else:
        return partial(reface_volume, threads=threads)

    def reface(contrast, volume, template_at_voxels, new_skin_distance, padding, replaced, tissue, seam,
               tissue_level, rng):
        del tissue, tissue_level
        raised = np.where(new_skin_distance >= 0, template_air,
                          np.where(padding, template_subcutaneous, template_at_voxels))
        return draw(contrast, volume, raised.astype(np.float32), replaced, seam, rng)

    return reface
