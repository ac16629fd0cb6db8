"""The group level and ``--reports-only``: reports from the outputs, no refacing."""

from __future__ import annotations

import logging

LOGGER = logging.getLogger("refacebids")


def run_reports(opts, bids_dir, output_dir, work_dir) -> None:
    """Rebuild the subject reports (participant level) or build the group report.

    The layout is read from the output itself, so the group level needs no
    ``--output-layout``; a release's figures and subject reports are looked for in
    ``WORK_DIR/qc`` (the ``-w`` of the participant run).

    Raises
    ------
    ValueError
        When ``output_dir`` holds no refacebids output, or the input cannot be listed.
    """
    from ..reports.build import (
        build_group_report,
        build_subject_reports,
        output_layout,
    )
    from ..utils.bids import collect_images
    from ..workflows.base import qc_dir

    layout = output_layout(output_dir)
    derivatives_dir = qc_dir(output_dir, work_dir, layout)
    if layout == "release" and not derivatives_dir.is_dir():
        LOGGER.warning("release: no figures or subject reports in %s (give the -w of the "
                       "participant run)", derivatives_dir)
    # The input was validated by the participant run; here it is only listed.
    jobs = collect_images(bids_dir, opts.participant_label, opts.session_label, validate=False)
    LOGGER.info("%s layout, %d image(s) selected in %s", layout, len(jobs), bids_dir)
    if opts.analysis_level == "participant":
        for report in build_subject_reports(jobs, output_dir, derivatives_dir, layout):
            LOGGER.info("report: %s", report)
        return
    table, page, rows = build_group_report(jobs, output_dir, derivatives_dir, layout)
    flagged = [row for row in rows if row.flagged]
    for row in flagged:
        LOGGER.info("flagged: %s: %s", row.file, "; ".join(row.reasons))
    LOGGER.info("%d image(s), %d flagged; group report: %s", len(rows), len(flagged), page)
    LOGGER.info("QC table: %s", table)
