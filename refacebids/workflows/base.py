"""The top-level refacebids workflow: one refacing branch per input image.

Branches share no node, so when one image fails (a crash file names its node) the
others run to the end; :mod:`refacebids.cli.run` maps crash files back to images. The
one dependency between branches: with ``--pet-anat auto`` a PET's registration waits
for the template registration of its session's T1w (:func:`anat_for_pet`).
"""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from .. import __version__
from .outputs import init_outputs_wf
from .resources import image_peak_gb


class ImageBuildError(RuntimeError):
    """The graph for one image could not be built (e.g. an unsupported modality)."""

    def __init__(self, job, reason):
        super().__init__(f"{job.relpath}: {reason}")
        self.job = job
        self.reason = reason


def init_refacebids_wf(*, jobs, output_dir, work_dir, template, omp_nthreads,
                       output_layout, bids_dir, command_line="", keep_sidecar_fields=(),
                       pet_anat="auto", name="refacebids_wf"):
    """Reface every selected image and write the results.

    Workflow Graph
        .. workflow::
            :graph2use: orig
            :simple_form: yes

            from pathlib import Path
            from refacebids.templates import load_template
            from refacebids.utils.bids import ImageJob
            from refacebids.workflows.base import init_refacebids_wf
            t1w = ImageJob(Path('/data/sub-01/anat/sub-01_T1w.nii.gz'),
                           'sub-01/anat/sub-01_T1w.nii.gz', '01', None, 'anat', 'T1w',
                           {'sub': '01'}, 'T1w', {})
            pet = ImageJob(Path('/data/sub-01/pet/sub-01_trc-FDG_pet.nii.gz'),
                           'sub-01/pet/sub-01_trc-FDG_pet.nii.gz', '01', None, 'pet', 'pet',
                           {'sub': '01', 'trc': 'FDG'}, 'pet', {})
            wf = init_refacebids_wf(jobs=[t1w, pet], output_dir=Path('/out'),
                                    work_dir=Path('/work'), template=load_template(),
                                    omp_nthreads=1, output_layout='derivatives',
                                    bids_dir=Path('/data'))

    Parameters
    ----------
    jobs : list of refacebids.utils.bids.ImageJob
        Images to reface.
    output_dir : Path
        Output dataset.
    work_dir : Path
        Work folder; in the release layout masks, transforms and figures are written
        to ``work_dir / "qc"`` (see :mod:`refacebids.workflows.outputs`).
    template : refacebids.templates.Template
        Replacement-face template.
    omp_nthreads : int
        Threads per registration process.
    output_layout : {"derivatives", "release"}
    bids_dir : Path
        Input dataset.
    command_line : str
        The command being run, recorded in each sidecar's provenance.
    keep_sidecar_fields : tuple of str
        Identifying sidecar fields to keep (``--keep-sidecar-field``).
    pet_anat : {"auto", "none"}
        ``auto``: a PET whose session has a T1w among ``jobs`` is registered through it
        (rigidly to the T1w, then the T1w's template transform; see
        :mod:`refacebids.through_anat`), so its branch waits for the T1w's registration.
        ``none``: every image is registered on its own.
    name : str
        Workflow name (keep it stable: the cache in ``work_dir`` is found by name).

    Raises
    ------
    ImageBuildError
        When the branch of one image cannot be built; the caller may drop that image
        and build again.
    """
    workflow = Workflow(name=name)
    # After the engine's methods paragraph (in init_reface_wf): how results were stored.
    workflow.__postdesc__ = (
        "Each refaced image took the place and file name of its original in a copy of "
        "the dataset"
        if output_layout == "release"
        else "Refaced images were written as a BIDS derivatives dataset, with the face "
        "masks and the template-to-image transforms"
    ) + (
        f"; each sidecar records the provenance (refacebids {__version__}, template "
        f"{template.name} with SHA-256 {template.sha256[:12]}..., checksums of input "
        "and output)."
    )
    anat_of = anat_for_pet(jobs) if pet_anat == "auto" else {}
    image_wfs = {
        job: init_image_wf(
            job=job,
            output_dir=output_dir,
            derivatives_dir=qc_dir(output_dir, work_dir, output_layout),
            template=template,
            omp_nthreads=omp_nthreads,
            output_layout=output_layout,
            command_line=command_line,
            keep_sidecar_fields=keep_sidecar_fields,
            through_anat=job in anat_of,
        )
        for job in jobs
    }
    workflow.add_nodes(list(image_wfs.values()))

    workflow.connect([
        (image_wfs[anat], image_wfs[pet], [
            ("start.in_file", "reface_wf.inputnode.anat_file"),
            ("reface_wf.outputnode.xfm_file", "reface_wf.inputnode.anat_xfm"),
            ("reface_wf.outputnode.registration_file", "reface_wf.inputnode.anat_registration"),
        ])
        for pet, anat in anat_of.items()
    ])  # fmt:skip
    return workflow


def anat_for_pet(jobs) -> dict:
    """``{PET job: T1w job}`` for each PET whose subject and session have a T1w in ``jobs``.

    Of several T1w images of a session, the first by path is used (the same every run).
    """
    t1w_of_session = {}
    for job in sorted(jobs, key=lambda job: job.relpath):
        if job.suffix == "T1w":
            t1w_of_session.setdefault((job.subject, job.session), job)
    return {job: t1w_of_session[(job.subject, job.session)] for job in jobs
            if job.modality == "pet" and (job.subject, job.session) in t1w_of_session}


def init_image_wf(*, job, output_dir, derivatives_dir, template, omp_nthreads,
                  output_layout, command_line="", keep_sidecar_fields=(), through_anat=False,
                  name=None):
    """Reface one image and write its outputs.

    Parameters
    ----------
    job : refacebids.utils.bids.ImageJob
    output_dir, derivatives_dir : Path
        See :func:`refacebids.workflows.outputs.init_outputs_wf`.
    template, omp_nthreads, output_layout, command_line, keep_sidecar_fields
        See :func:`init_refacebids_wf`.
    through_anat : bool
        Register through the session's T1w: the caller connects the T1w branch to
        ``reface_wf.inputnode.anat_*`` (see :func:`refacebids.workflows.reface.init_reface_wf`).
    name : str, optional
        Defaults to a name derived from the image's file name (:attr:`ImageJob.node_name`),
        which :mod:`refacebids.cli.run` uses to trace crash files back to the image.

    Outputs
    -------
    (none) — results are written to ``output_dir``/``derivatives_dir``.
    """
    from .reface import init_reface_wf

    workflow = Workflow(name=name or image_wf_name(job))
    # Recorded once per image and cached with the branch, so that a resumed run reports
    # when the refacing of this image really started.
    start = pe.Node(
        niu.Function(function=_start, input_names=["in_file"],
                     output_names=["in_file", "start_time"]),
        name="start",
        run_without_submitting=True,
    )
    start.inputs.in_file = str(job.path)
    try:
        reface_wf = init_reface_wf(
            modality=job.modality, template=template, omp_nthreads=omp_nthreads,
            mem_gb=image_peak_gb(job.path), frame_durations=_frame_durations(job),
            through_anat=through_anat, name="reface_wf",
        )
    except Exception as exc:  # the engine refuses this image; others still run
        raise ImageBuildError(job, _one_line(exc)) from exc
    outputs_wf = init_outputs_wf(
        job=job,
        output_dir=output_dir,
        derivatives_dir=derivatives_dir,
        output_layout=output_layout,
        template_name=template.name,
        command_line=command_line,
        keep_sidecar_fields=keep_sidecar_fields,
    )

    workflow.connect([
        (start, reface_wf, [("in_file", "inputnode.in_file")]),
        (start, outputs_wf, [("in_file", "inputnode.source_file"),
                             ("start_time", "inputnode.start_time")]),
        (reface_wf, outputs_wf, [("outputnode.out_file", "inputnode.out_file"),
                                 ("outputnode.mask_file", "inputnode.mask_file"),
                                 ("outputnode.xfm_file", "inputnode.xfm_file"),
                                 ("outputnode.metrics_file", "inputnode.metrics_file"),
                                 ("outputnode.reportlets", "inputnode.reportlets")]),
    ])  # fmt:skip
    return workflow


def image_wf_name(job) -> str:
    """Name of the branch of ``job`` in the graph (and of its folder in the work dir)."""
    return f"image_{job.node_name}_wf"


def qc_dir(output_dir, work_dir, output_layout) -> Path:
    """Where masks, transforms and figures go: the output itself, or outside a release."""
    return Path(work_dir) / "qc" if output_layout == "release" else Path(output_dir)


def _start(in_file):
    from datetime import datetime, timezone

    return in_file, datetime.now(timezone.utc).isoformat(timespec="seconds")


def _one_line(exc: BaseException) -> str:
    # The reason must fit the one line per failure on stderr.
    words = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return words or type(exc).__name__


def _frame_durations(job):
    # A PET's FrameDuration weights its frames in the registration mean.
    durations = job.metadata.get("FrameDuration") if job.modality == "pet" else None
    return [float(d) for d in durations] if isinstance(durations, list) else None
