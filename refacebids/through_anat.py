"""The engine's register step through a same-session T1w (``--pet-anat auto``).

The file-level counterpart of :func:`refacebids.engine.register_image` for an image
(a PET) whose session has a T1w being refaced in the same run: the image is aligned
rigidly to the T1w, the T1w's template transform is reused, and the composed transform
must pass the same check as a template registered to the image itself. When it does
not, the image is registered on its own, as without a T1w, and the record says why.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import engine, modalities
from .core.anat import compose_through, register_rigid
from .core.registration import check_failures, registration_quality, working_image


def register_through_anat(
    in_file, anat_file, anat_xfm, anat_registration_file, template, out_dir, *, seed: int = 42,
    threads: int = 1, modality: str = "pet", frame_durations=None,
) -> dict:
    """Register the template to the image through the T1w of its session.

    Parameters
    ----------
    in_file : path-like
        The image (3D or 4D; a 4D image is aligned on its reference, see
        :mod:`refacebids.modalities`).
    anat_file : path-like
        The session's T1w.
    anat_xfm : path-like
        The T1w's template -> T1w transform (ITK .h5).
    anat_registration_file : path-like
        The T1w's registration record (``registration.json`` of
        :func:`refacebids.engine.register_image`), whose settings are reported.
    template : refacebids.templates.Template
    out_dir : path-like
        Work folder of this step.
    seed, threads, modality, frame_durations
        As for :func:`refacebids.engine.register_image`.

    Returns
    -------
    dict
        The registration record, as :func:`refacebids.engine.register_image` returns
        it (also written to ``out_dir/registration.json``). ``settings["path"]`` is
        ``"anat"`` when the T1w's transform was used, ``"own"`` after a fall-back;
        ``settings["anat"]`` describes the rigid registration to the T1w (its
        ``similarity`` and whether the composed transform passed the check), and
        ``warnings`` says why a fall-back happened.
    """
    out_dir = Path(out_dir)
    anat_record = json.loads(Path(anat_registration_file).read_text())
    head = modalities.load(in_file, modality, frame_durations)
    reference, template_head = modalities.registration_inputs(head, template, modality)
    anat = modalities.load(anat_file, "T1w")
    rigid = register_rigid(reference, head.affine, anat.reference(), anat.affine,
                           str(out_dir / "img2anat_"), seed=seed, threads=threads)
    composite = compose_through(rigid.transform, str(anat_xfm),
                                str(out_dir / "tpl2img_Composite.h5"))

    quality = registration_quality(*working_image(reference, head.affine), template_head, composite,
                                   overlap=modalities.registration_overlap(modality), threads=threads)
    anat_settings = {
        **rigid.settings,
        "anat_file": Path(anat_file).name,
        "similarity": rigid.similarity,
        "ok": quality["ok"],
    }
    if quality["ok"]:
        record = {
            "composite": composite,
            **quality,
            "settings": {**anat_record["settings"], "path": "anat", "anat": anat_settings},
            "warnings": [],
        }
    else:
        record = engine.register_image(in_file, template, out_dir, seed=seed, threads=threads,
                                       modality=modality, frame_durations=frame_durations)
        record["settings"] = {**record["settings"], "path": "own", "anat": anat_settings}
        record["warnings"] = [
            f"registration through {Path(anat_file).name} failed its check "
            f"({'; '.join(check_failures(quality))}); the image was registered on its own"
        ]
    (out_dir / "registration.json").write_text(json.dumps(record, indent=2))
    return record
