"""Entry point of the ``refacebids`` command.

Exit status 0 when every selected image was refaced, 1 when any failed (after all the
others were processed), 2 for a command-line error. Progress goes to stdout; stderr
carries only errors, one line each: ``refacebids: ERROR: <input relpath>: <reason>``
per failed image, so that a caller can parse it.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

# Set before nipype/templateflow are imported: no telemetry request, no template
# download; refacebids must run offline.
os.environ.setdefault("NIPYPE_NO_ET", "1")
os.environ.setdefault("TEMPLATEFLOW_AUTOUPDATE", "0")
os.environ.setdefault("TEMPLATEFLOW_USE_DATALAD", "0")

from ..utils.memory import reuse_freed_memory  # noqa: E402
from ..utils.threads import use_itk_threads  # noqa: E402
from .execution import LOCAL_PLUGINS, describe, execution_from_options, prepare_batch_jobs  # noqa: E402
from ..utils.atomic import remove_stale_temporaries  # noqa: E402
from ..utils.lock import folder_lock  # noqa: E402
from .parser import build_parser, check_paths  # noqa: E402

LOGGER = logging.getLogger("refacebids")
ERROR_PREFIX = "refacebids: ERROR:"


def main(argv=None) -> int:
    """Run refacebids; return the exit status."""
    parser = build_parser()
    opts = parser.parse_args(argv)
    opts.argv = sys.argv[1:] if argv is None else list(argv)
    if opts.scrub_tables and opts.output_layout != "release":
        parser.error("--scrub-tables needs --output-layout release (only a release copies "
                     "the tables)")
    try:
        bids_dir, output_dir = check_paths(opts.bids_dir, opts.output_dir)
        work_dir = _check_work_dir(opts.work_dir, bids_dir, output_dir)
        execution = execution_from_options(opts)
    except ValueError as exc:
        parser.error(str(exc))
    if opts.audit and opts.analysis_level != "group":
        parser.error("--audit runs at the group level, after the participant level")
    # Before anything imports antspyx: this process and the workers forked from it.
    use_itk_threads(opts.omp_nthreads)
    reuse_freed_memory()

    with _stderr_for_errors_only() as errors:
        _setup_logging()
        if opts.analysis_level == "group" and opts.audit:
            # First, so that the group report shows its results.
            status = _run_audit(bids_dir, output_dir, opts.nprocs, errors)
            if status:
                return status
        try:
            if opts.analysis_level == "group" or opts.reports_only:
                from .reports import run_reports

                run_reports(opts, bids_dir, output_dir, work_dir)
                return 0
            failures = _run_participant(opts, bids_dir, output_dir, work_dir, execution)
        except Exception as exc:  # a dataset-level problem: no image was processed
            # A traceback (to stdout) only for what is not a plain user error.
            LOGGER.error("stopped: %s", exc, exc_info=not isinstance(exc, ValueError))
            print(f"{ERROR_PREFIX} {_one_line(exc)}", file=errors, flush=True)
            return 1
        for relpath, reason in failures.items():
            print(f"{ERROR_PREFIX} {relpath}: {reason}", file=errors, flush=True)
    return 1 if failures else 0


def _run_participant(opts, bids_dir, output_dir, work_dir, execution) -> dict:
    """Reface the selected images; return ``{relpath: reason}`` of those that failed."""
    from ..templates import local_template

    jobs = _collected_while_preloading(
        bids_dir, opts.participant_label, opts.session_label, validate=not opts.skip_bids_validation,
        template=local_template(opts.template) if execution.plugin in LOCAL_PLUGINS else None,
    )
    if not jobs:
        LOGGER.warning("nothing to do: no image matched the selection")
        return {}
    # Taken before anything is written, held until everything is.
    with folder_lock(output_dir), folder_lock(work_dir, "the work dir"):
        return _reface(opts, jobs, bids_dir, output_dir, work_dir, execution)


def _collected_while_preloading(*selection, validate: bool, template) -> list:
    """``collect_images(*selection, validate=validate)``; meanwhile, with a ``template``,
    its arrays are derived in this process, for the graph's workers forked from it
    afterwards to inherit.

    pybids indexes the dataset in a process forked for it: both it and the derivation
    hold Python's lock most of the time, and on two threads of one process each waited
    for the other (0.85 s together, 0.36 s and 0.54 s apart).
    """
    from ..utils.bids import collect_images

    if template is None:
        return collect_images(*selection, validate=validate)
    from ..engine import preload_template

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
        collected = pool.submit(collect_images, *selection, validate=validate)
        preload_template(template)
        return collected.result()


def _reface(opts, jobs, bids_dir, output_dir, work_dir, execution) -> dict:
    from ..templates import load_template
    from ..workflows.base import (
        ImageBuildError,
        anat_for_pet,
        image_wf_name,
        init_refacebids_wf,
        qc_dir,
    )
    from ..reports.build import build_subject_reports
    from ..workflows.outputs import (
        finalize_release,
        prepare_release,
        refaced_path,
        write_derivatives_description,
    )

    command_line = " ".join(["refacebids", *map(str, opts.argv)])

    selected = list(jobs)
    LOGGER.info("found %d image(s) to reface in %s", len(jobs), bids_dir)
    # Found before any reading: content not fetched, sidecar not valid JSON.
    failures = {job.relpath: job.problem for job in jobs if job.problem}
    jobs = [job for job in jobs if not job.problem]
    template = load_template(opts.template, work_dir=work_dir)
    LOGGER.info("template %s (%s), sha256 %s", template.name, template.path, template.sha256)

    derivatives_dir = qc_dir(output_dir, work_dir, opts.output_layout)
    for folder in {Path(output_dir), derivatives_dir}:
        stale = remove_stale_temporaries(folder)
        if stale:
            LOGGER.info("removed %d temporary file(s) an interrupted run left in %s",
                        len(stale), folder)
    with_ct = any(job.datatype == "ct" for job in jobs)
    if opts.output_layout == "release":
        prepare_release(bids_dir, output_dir, jobs,
                        keep_sidecar_fields=opts.keep_sidecar_field,
                        scrub_columns=opts.scrub_tables)
        LOGGER.info("release: masks, transforms and figures go to %s", derivatives_dir)
    write_derivatives_description(derivatives_dir, bids_dir, with_ct=with_ct)

    while True:
        try:
            workflow = init_refacebids_wf(
                jobs=jobs,
                output_dir=output_dir,
                work_dir=work_dir,
                template=template,
                omp_nthreads=opts.omp_nthreads,
                output_layout=opts.output_layout,
                bids_dir=bids_dir,
                command_line=command_line,
                keep_sidecar_fields=tuple(opts.keep_sidecar_field),
                pet_anat=opts.pet_anat,
            )
            break
        except ImageBuildError as exc:
            failures[exc.job.relpath] = exc.reason
            jobs = [job for job in jobs if job is not exc.job]

    if jobs:
        # A fresh folder per run, so that crash files of earlier runs are not counted.
        (work_dir / "crash").mkdir(parents=True, exist_ok=True)
        crash_dir = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"),
                                          dir=work_dir / "crash"))
        prepare_batch_jobs(workflow, execution, opts.mem_gb)
        if execution.plugin in LOCAL_PLUGINS:
            from ..engine import preload_template

            preload_template(template)  # done already, unless adopted from TemplateFlow
        LOGGER.info("running with %s", describe(execution))
        _run_workflow(workflow, work_dir, crash_dir, execution)
        crashes = _crash_reasons(crash_dir)
        anat_of = anat_for_pet(jobs) if opts.pet_anat == "auto" else {}

        def crash_of(job):
            name = image_wf_name(job)
            return next((r for node, r in crashes.items() if f".{name}." in f".{node}."), None)

        for job in jobs:
            reason = crash_of(job)
            if reason is None and not refaced_path(job, output_dir, opts.output_layout).exists():
                # A PET registered through its session's T1w does not run when the T1w's
                # registration failed.
                anat = anat_of.get(job)
                reason = (f"its session's T1w {anat.relpath} failed, and --pet-anat auto "
                          "registers it through the T1w; rerun with --pet-anat none"
                          if anat is not None and crash_of(anat) else "no refaced image was written")
            if reason is None:
                LOGGER.info("done: %s", job.relpath)
            else:
                failures[job.relpath] = reason
                LOGGER.error("failed: %s: %s", job.relpath, reason)

    if opts.output_layout == "release":
        finalize_release(output_dir, sorted(failures))
    # Every selected image has a section: refaced, or failed with its reason.
    reports = build_subject_reports(selected, output_dir, derivatives_dir, opts.output_layout,
                                    failures=failures, command_line=command_line)
    for report in reports:
        LOGGER.info("report: %s", report)
    refaced = sum(job.relpath not in failures for job in jobs)
    LOGGER.info("%d image(s) refaced, %d failed", refaced, len(failures))
    return dict(sorted(failures.items()))


def _run_audit(bids_dir, output_dir, nprocs: int, errors) -> int:
    """The re-identification audit (optional extra); 1 with one error line if it cannot run."""
    from ..audit import AuditUnavailable, run_group_audit

    try:
        run_group_audit(bids_dir, output_dir, nprocs=nprocs)
    except (AuditUnavailable, ValueError) as exc:
        LOGGER.error("audit: %s", exc)
        print(f"{ERROR_PREFIX} {_one_line(exc)}", file=errors, flush=True)
        return 1
    return 0


def _run_workflow(workflow, work_dir: Path, crash_dir: Path, execution) -> None:
    workflow.base_dir = str(work_dir)
    workflow.config["execution"].update({
        "crashdump_dir": str(crash_dir),
        "crashfile_format": "txt",
        "stop_on_first_crash": False,
        # Keep every node's outputs so that a rerun with the same work dir resumes.
        "remove_unnecessary_outputs": False,
        "poll_sleep_duration": execution.poll_sleep_duration,
    })
    # MultiProc collects garbage before every submission: over the objects the command
    # has built so far (pybids, Nipype, the graph) that took 56 ms each time, 0.6 s of
    # one image's critical path. Frozen, they are left out of the collections.
    gc.freeze()
    try:
        workflow.run(plugin=execution.plugin, plugin_args=execution.plugin_args)
    except RuntimeError as exc:
        # Raised once after all branches ran, when any node failed; the crash files
        # say which images failed and why.
        LOGGER.debug("nipype: %s", exc)
    finally:
        gc.unfreeze()


def _crash_reasons(crash_dir: Path) -> dict:
    """``{node full name: last line of its traceback}`` from nipype's text crash files."""
    reasons = {}
    for crashfile in sorted(crash_dir.glob("crash-*.txt")):
        text = crashfile.read_text(errors="replace")
        node = re.search(r"^Node: (\S+)", text, flags=re.MULTILINE)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if node and lines:
            reasons[node.group(1)] = _reason_from_traceback(lines)
    return reasons


def _reason_from_traceback(lines: list[str]) -> str:
    # The last line of a Python traceback is "ExceptionType: message". Nipype wraps
    # the interface's exception; its own closing notes are not the reason.
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Failed|Exit)\w*:", line):
            kind, _, message = line.partition(": ")
            return message.strip() or kind
    return lines[-1]


def _check_work_dir(work_dir: Path, bids_dir: Path, output_dir: Path) -> Path:
    work_dir = work_dir.resolve()
    for name, folder in (("BIDS_DIR", bids_dir), ("OUTPUT_DIR", output_dir)):
        if work_dir == folder or work_dir.is_relative_to(folder):
            raise ValueError(f"the work dir {work_dir} must not be inside {name} {folder}")
    return work_dir


def _one_line(exc: BaseException) -> str:
    # The reason must fit the one line per failure on stderr.
    words = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return words or type(exc).__name__


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s",
                                           "%H:%M:%S"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").handlers[:] = [handler]
    from nipype import logging as nlogging

    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        nlogger = nlogging.getLogger(name)
        nlogger.handlers[:] = [handler]
        nlogger.propagate = False
    # Node-by-node chatter hides refacebids' own progress; failures are still logged.
    nlogging.getLogger("nipype.workflow").setLevel(logging.WARNING)


@contextmanager
def _stderr_for_errors_only():
    """Route file descriptor 2 to stdout and yield a stream to the real stderr.

    Libraries and worker processes (ITK, nipype, warnings) write to fd 2; moving them
    to stdout keeps stderr to the one-line-per-failure contract.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(1, 2)
    errors = os.fdopen(os.dup(saved), "w")
    try:
        yield errors
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        errors.flush()
        os.dup2(saved, 2)
        os.close(saved)
        errors.close()


def command() -> None:
    """The ``refacebids`` command: :func:`main`, exiting with its status.

    Everything the run built (pybids' index, Nipype's graph, the template's arrays) is
    frozen out of the garbage collections Python runs as it exits: they walked some
    150 000 objects for 0.25-0.33 s after everything was written. Exit handlers still
    run.
    """
    status = main()
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    command()
