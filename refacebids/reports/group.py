"""The group report: one sortable table of every image, flagged rows first.

A static page that works from disk: styles and the few lines of sorting script are
inline, nothing is fetched. Each row links to the image's section in its subject's
report and shows the before/after renders as a thumbnail, so that a reviewer sees in
seconds which images need a look and why.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..utils.atomic import write_text
from .audit import SUMMARY_LABELS
from .html import (
    STYLE,
    escape,
    escape_attribute,
    format_value,
    html_table,
    paragraphs_html,
    status_badge,
)
from .qc import METRICS, out_of_range_columns

__all__ = ["write_group_report"]

GROUP_STYLE = """
main { max-width: none; } main p, main ol, main h2, main details { max-width: 70em; }
.scroll { overflow-x: auto; }
table.qc { font-size: 0.82em; }
table.qc th { cursor: pointer; user-select: none; }
table.qc th[aria-sort="ascending"]::after { content: " ▲"; }
table.qc th[aria-sort="descending"]::after { content: " ▼"; }
table.qc tr.flag td { background: #fff6f0; }
table.qc td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.qc td.bad { color: #a94400; font-weight: bold; }
table.qc img { width: 144px; height: 96px; object-fit: contain; border: 1px solid #ccc; }
table.qc td.file { word-break: break-all; min-width: 12em; }
table.qc td.why { min-width: 18em; }
"""

# Sort a table by the clicked column: numbers as numbers (cells carry data-value), text
# otherwise; a second click reverses. Ties keep their order, so "flagged first" stays.
SORT_SCRIPT = """
document.querySelectorAll("table.qc th").forEach(function (th, column) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var key = function (row) {
      var cell = row.cells[column], value = cell.getAttribute("data-value");
      value = value === null ? cell.textContent.trim() : value;
      var number = parseFloat(value);
      return value !== "" && !isNaN(number) && isFinite(value) ? [0, number] : [1, value];
    };
    var rows = Array.prototype.slice.call(body.rows).map(function (row, index) {
      return [key(row), index, row];
    });
    rows.sort(function (a, b) {
      var x = a[0], y = b[0], order = 0;
      if (x[0] !== y[0]) { order = x[0] - y[0]; }
      else if (x[1] < y[1]) { order = -1; }
      else if (x[1] > y[1]) { order = 1; }
      return (ascending ? order : -order) || a[1] - b[1];
    });
    rows.forEach(function (entry) { body.appendChild(entry[2]); });
  });
});
"""


def write_group_report(out_html, rows, *, title: str, report_links: dict, thumbnails: dict,
                       methods: str, references: list[str], audit=None,
                       created: str | None = None) -> Path:
    """Write the group report.

    Parameters
    ----------
    out_html : path-like
        The page; links are relative to its folder. Written atomically.
    rows : list of refacebids.reports.qc.QCRow
        In the order shown (flagged first: :func:`refacebids.reports.qc.sort_rows`).
    title : str
        Name of the dataset.
    report_links : dict
        ``QCRow.source -> path`` of the image's section in its subject report.
    thumbnails : dict
        ``QCRow.source -> path`` of a figure shown small in the row.
    methods : str
        Methods paragraph of the whole output.
    references : list of str
    audit : refacebids.reports.audit.Audit, optional
        Re-identification audit, shown when given.
    created : str, optional
        When the content dates from (footer).
    """
    out_dir = Path(out_html).parent
    flagged = sum(row.flagged for row in rows)
    header = "".join(
        f'<th title="{escape_attribute(label)}">{escape(name)}</th>'
        for name, label in (
            ("status", "pass, or flag: needs a human look"), ("subject", "subject"),
            ("session", "session"), ("modality", "modality"),
            ("renders", "skin renders before (top) and after (bottom)"),
            ("image", "refaced image"), ("why", "why the image is flagged"),
            *((metric.short, metric.label) for metric in METRICS),
        )
    )
    legend = "".join(f"<li><b>{escape(metric.short)}</b>: {escape(metric.label)}</li>"
                     for metric in METRICS)
    body = "\n".join(
        _row(row, out_dir, report_links.get(row.source), thumbnails.get(row.source))
        for row in rows
    )
    audit_section = _audit_section(audit) if audit else ""
    reference_items = "".join(f"<li>{escape(reference)}</li>" for reference in references)
    paragraphs = paragraphs_html(methods)
    document = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>refacebids group report</title>
<style>{STYLE}{GROUP_STYLE}</style>
</head>
<body>
<nav><a href="#images">Images</a>{'<a href="#audit">Re-identification audit</a>'
                                  if audit else ''}<a href="#methods">Methods</a></nav>
<main>
<h1>Group report</h1>
<p>Dataset: {escape(title)}</p>
<p id="counts"><b>{len(rows)}</b> image(s): <span class="status status-flag">{flagged}
flagged</span> <span class="status status-pass">{len(rows) - flagged} pass</span>.
Flagged images need a human look; the reason is in the row. Click a column title to sort;
the page opens with flagged rows first.</p>
{audit_section}
<h2 id="images">Images</h2>
<div class="scroll"><table class="qc" id="qc">
<thead><tr>{header}</tr></thead>
<tbody>
{body}
</tbody>
</table></div>
<details><summary>What the columns mean</summary><ul>{legend}</ul></details>
<h2 id="methods">Methods</h2>
{paragraphs}
<h3>References</h3>
<ol>{reference_items}</ol>
<footer>Created {escape(created or "")} by refacebids; the table is also in group_qc.tsv.
</footer>
</main>
<script>{SORT_SCRIPT}</script>
</body>
</html>
"""
    return write_text(out_html, document)


def _row(row, out_dir: Path, report: Path | None, thumbnail: Path | None) -> str:
    image = escape(row.file)
    if report is not None:
        image = f'<a href="{escape_attribute(_relative(report, out_dir))}">{image}</a>'
    cells = [
        f'<td data-value="{int(not row.flagged)}">{status_badge(row.status)}</td>',
        f"<td>{escape(row.subject)}</td>",
        f"<td>{escape(row.session or 'n/a')}</td>",
        f"<td>{escape(row.modality)}</td>",
        _thumbnail(row, out_dir, thumbnail),
        f'<td class="file">{image}</td>',
        f'<td class="why">{"<br>".join(escape(reason) for reason in row.reasons) or "—"}</td>',
    ]
    out_of_range = out_of_range_columns(row)
    for metric in METRICS:
        value = row.metrics.get(metric.column)
        data = "" if value is None else escape_attribute(value)
        style = "num bad" if metric.column in out_of_range else "num"
        cells.append(f'<td class="{style}" data-value="{data}">'
                     f"{escape(format_value(value))}</td>")
    return f'<tr class="{row.status}">{"".join(cells)}</tr>'


def _thumbnail(row, out_dir: Path, thumbnail: Path | None) -> str:
    if thumbnail is None:
        return "<td></td>"
    source = escape_attribute(_relative(thumbnail, out_dir))
    return (f'<td><img src="{source}" alt="renders of {escape_attribute(row.file)}" '
            'loading="lazy"></td>')


def _audit_section(audit) -> str:
    summary = {label: audit.summary[key] for key, label in SUMMARY_LABELS.items()
               if key in audit.summary}
    matched = [row for row in audit.rows if row["top1_is_own"]]
    listing = "".join(f"<li>{escape(row.get('file', ''))}</li>" for row in matched)
    return (
        '<h2 id="audit">Re-identification audit</h2>\n'
        "<p>A face recogniser ranked every original face against each refaced face; "
        "an image is flagged when its own original came first.</p>\n"
        f"{html_table(summary)}\n"
        f"<p><b>{len(matched)}</b> of {len(audit.rows)} refaced image(s) were matched first "
        "to their own original" + (f":</p><ul>{listing}</ul>" if matched else ".</p>")
    )


def _relative(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path, out_dir)).as_posix()
