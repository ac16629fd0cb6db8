"""The per-image refacing graph: register -> mask -> replace -> report."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from ..interfaces.reface import RegisterTemplate, RegisterThroughAnat, ReplaceFace, WarpLabels
from ..interfaces.reports import FaceReportlets
from ..reports.methods import methods_paragraph

MRI_MODALITIES = ("T1w", "T2w", "FLAIR", "PDw", "T2starw", "PD")
MODALITIES = (*MRI_MODALITIES, "pet", "ct")


def init_reface_wf(
    *, modality: str, template, omp_nthreads: int = 1, mem_gb: float = 1.6, frame_durations=None,
    through_anat: bool = False, name: str = "reface_wf",
):
    """Build the graph that refaces one image.

    Workflow Graph
        .. workflow::
            :graph2use: orig
            :simple_form: yes

            from refacebids.templates import load_template
            from refacebids.workflows.reface import init_reface_wf
            wf = init_reface_wf(modality="pet", template=load_template(), through_anat=True)

    Parameters
    ----------
    modality : str
        BIDS suffix of the image (``T1w``, ``T2w``, ``FLAIR``, ``PDw``, ``T2starw``, ``PD``,
        ``pet``, ``ct``); see :mod:`refacebids.modalities` for what PET and CT change.
    template : refacebids.templates.Template
        Replacement-face template with its labels.
    omp_nthreads : int
        ITK threads for registration and resampling (those nodes reserve as many CPUs).
    mem_gb : float
        Peak memory of the heaviest step for this image (GB), for the scheduler
        (:func:`refacebids.workflows.resources.image_peak_gb`).
    frame_durations : list of float, optional
        PET ``FrameDuration`` (s): a dynamic PET is registered on its time-weighted mean.
    through_anat : bool
        Register through the session's T1w (``--pet-anat auto``): rigidly to the T1w, then
        the T1w's template transform (:mod:`refacebids.through_anat`); the image's own
        registration if that fails its check. Adds the ``anat_*`` inputs.
    name : str
        Workflow name.

    Inputs
    ------
    in_file
        Image to reface (3D, or 4D whose volumes share one position: one registration
        serves every volume).
    anat_file, anat_xfm, anat_registration
        With ``through_anat``: the session's T1w, and the ``xfm_file`` and
        ``registration_file`` of its own refacing graph.

    Outputs
    -------
    out_file
        Refaced image, same header, dtype and scaling as the input.
    mask_file
        uint8 mask of the replaced voxels.
    xfm_file
        Template -> image transform (ITK composite .h5).
    registration_file
        The registration record (JSON), for images registered through this one.
    metrics_file
        Quality numbers (JSON): protected voxels changed, face surface moved, noise and
        intensity match, registration similarity.
    reportlets
        PNG figures for the report.
    """
    if modality not in MODALITIES:
        raise ValueError(
            f"refacing {modality} images is not supported (this version refaces "
            f"{', '.join(MODALITIES)})"
        )
    workflow = Workflow(name=name)
    workflow.__desc__ = methods_paragraph(
        modality, template.name, registration={"path": "anat"} if through_anat else None)
    anat_fields = ["anat_file", "anat_xfm", "anat_registration"] if through_anat else []
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file", *anat_fields]), name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["out_file", "mask_file", "xfm_file", "registration_file",
                                      "metrics_file", "reportlets"]),
        name="outputnode",
    )
    register_interface = RegisterThroughAnat if through_anat else RegisterTemplate
    register = pe.Node(
        register_interface(template=str(template.path), num_threads=omp_nthreads,
                           modality=modality, frame_durations=list(frame_durations or [])),
        name="register",
        n_procs=omp_nthreads,
        mem_gb=mem_gb,
    )
    by_modality = dict(modality=modality, frame_durations=list(frame_durations or []))
    mask = pe.Node(WarpLabels(template=str(template.path), num_threads=omp_nthreads, **by_modality),
                   name="mask", n_procs=omp_nthreads, mem_gb=mem_gb)
    replace = pe.Node(ReplaceFace(template=str(template.path), num_threads=omp_nthreads, **by_modality),
                      name="replace", n_procs=omp_nthreads, mem_gb=mem_gb)
    report = pe.Node(FaceReportlets(num_threads=omp_nthreads), name="report", n_procs=omp_nthreads,
                     mem_gb=mem_gb)

    workflow.connect([
        (inputnode, register, [("in_file", "in_file")] + ([
            ("anat_file", "anat_file"),
            ("anat_xfm", "anat_xfm"),
            ("anat_registration", "anat_registration"),
        ] if through_anat else [])),
        (register, mask, [("image_file", "in_file"), ("composite", "composite"),
                          ("registration", "registration")]),
        (register, replace, [("image_file", "in_file"), ("registration", "registration")]),
        (mask, replace, [("labels_file", "labels_file"), ("coords_file", "coords_file"),
                         ("skin_file", "skin_file"), ("placement_file", "placement_file")]),
        (register, report, [("image_file", "in_file")]),
        (mask, report, [("labels_file", "labels_file")]),
        (replace, report, [("values_file", "values_file"), ("mask_file", "mask_file")]),
        (replace, outputnode, [
            ("out_file", "out_file"),
            ("mask_file", "mask_file"),
            ("metrics_file", "metrics_file"),
        ]),
        (register, outputnode, [("composite", "xfm_file"),
                                ("registration", "registration_file")]),
        (report, outputnode, [("reportlets", "reportlets")]),
    ])  # fmt:skip
    return workflow
