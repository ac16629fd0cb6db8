"""Self-contained static HTML report of one subject (works from disk, no server, no JS)."""

from __future__ import annotations

import html
import json
import re
from datetime import datetime, timezone
from pathlib import Path

from refacebids.utils.atomic import write_text

__all__ = ["STYLE", "escape", "escape_attribute", "format_value", "html_table",
           "paragraphs_html", "status_badge", "write_subject_report"]

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #222; background: #fafafa; }
nav { position: sticky; top: 0; background: #2c3e50; padding: 0.5em 1em; z-index: 1; }
nav a { color: #ecf0f1; margin-right: 1.2em; text-decoration: none; font-size: 0.95em; }
main { max-width: 1100px; margin: 0 auto; padding: 1em 2em 3em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 2px solid #2c3e50; padding-bottom: 0.2em; }
h3 { font-size: 1.05em; margin-top: 1.4em; color: #2c3e50; }
figure { margin: 0.8em 0; } figure img { max-width: 100%; border: 1px solid #ccc; }
figcaption { font-size: 0.85em; color: #555; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.7em; text-align: left; vertical-align: top; }
th { background: #eef2f5; }
pre { background: #f0f0f0; padding: 0.7em; overflow-x: auto; white-space: pre-wrap;
      word-break: break-all; font-size: 0.85em; }
.warning { color: #a94400; font-weight: bold; }
.status { display: inline-block; padding: 0 0.5em; border-radius: 3px; font-weight: bold; }
.status-flag { background: #fbe3d4; color: #a94400; }
.status-pass { background: #dff0d8; color: #2b6b2b; }
details summary { cursor: pointer; color: #2c3e50; }
footer { font-size: 0.8em; color: #777; margin-top: 3em; }
"""


def write_subject_report(out_html, subject: str, sections: list[dict],
                         created: str | None = None) -> Path:
    """Write one subject's report: a section per refaced image.

    Parameters
    ----------
    out_html : path-like
        Report file; reportlet paths are relative to its folder. Written atomically.
    subject : str
        Participant label, with or without the ``sub-`` prefix.
    sections : list of dict
        Each with keys ``title`` (str), ``anchor`` (str, the section's id), ``status``
        (``"pass"`` or ``"flag"``), ``reasons`` (list of str: why the image needs a
        look), ``reportlets`` (list of PNG paths relative to the report), ``metrics``
        (dict, nested dicts allowed; a ``warnings`` list is highlighted), ``details``
        (dict, shown folded), ``command_line`` (str), ``versions`` (dict name ->
        version) and ``methods`` (str, plain text paragraphs separated by blank
        lines). Missing keys are left out of the section.
    created : str, optional
        When the report's content dates from, for the footer; by default the time of
        writing.

    Returns
    -------
    pathlib.Path
        ``out_html``.
    """
    label = subject if subject.startswith("sub-") else f"sub-{subject}"
    anchors = [section.get("anchor") or f"section-{index}"
               for index, section in enumerate(sections)]
    navigation = "".join(
        f'<a href="#{anchor}">{escape(section.get("title", anchor))}</a>'
        for anchor, section in zip(anchors, sections)
    )
    body = "\n".join(_section(anchor, section) for anchor, section in zip(anchors, sections))
    if any("status" in section for section in sections):
        body = _summary(anchors, sections) + body
    created = created or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    document = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>refacebids: {escape(label)}</title>
<style>{STYLE}</style>
</head>
<body>
<nav>{navigation}</nav>
<main>
<h1>refacebids report: {escape(label)}</h1>
{body if sections else "<p>No images were refaced for this subject.</p>"}
<footer>Created {escape(created)} by refacebids.</footer>
</main>
</body>
</html>
"""
    return write_text(out_html, document)


def _section(anchor: str, section: dict) -> str:
    parts = [f'<section id="{anchor}">', f"<h2>{escape(section.get('title', ''))}</h2>"]
    if section.get("status"):
        parts.append(f"<p>{status_badge(section['status'])}</p>")
    warnings = [*(section.get("reasons") or []),
                *((section.get("metrics") or {}).get("warnings") or [])]
    parts += [f'<p class="warning">Warning: {escape(w)}</p>' for w in warnings]
    for path in section.get("reportlets") or []:
        name = Path(path).stem
        parts.append(
            f'<figure><img src="{escape_attribute(Path(path).as_posix())}" '
            f'alt="{escape_attribute(name)}" '
            f'loading="lazy"><figcaption>{escape(name)}</figcaption></figure>'
        )
    if section.get("metrics"):
        parts += ["<h3>Quality metrics</h3>", html_table(section["metrics"])]
    if section.get("details"):
        parts += ["<details><summary>Registration, template and checksums</summary>",
                  html_table(section["details"]), "</details>"]
    if section.get("methods"):
        parts.append("<h3>Methods</h3>")
        parts.append(paragraphs_html(section["methods"]))
    if section.get("command_line") or section.get("versions"):
        parts.append("<details><summary>Provenance</summary>")
        if section.get("command_line"):
            parts.append(f"<h3>Command line</h3><pre>{escape(section['command_line'])}</pre>")
        if section.get("versions"):
            parts += ["<h3>Software versions</h3>", html_table(section["versions"])]
        parts.append("</details>")
    parts.append("</section>")
    return "\n".join(parts)


def _summary(anchors: list[str], sections: list[dict]) -> str:
    """At a glance: one line per image with its status and what to look at."""
    rows = "".join(
        f'<tr><td><a href="#{anchor}">{escape(section.get("title", anchor))}</a></td>'
        f'<td>{status_badge(section.get("status", ""))}</td>'
        f'<td>{"<br>".join(escape(r) for r in section.get("reasons") or []) or "—"}</td></tr>'
        for anchor, section in zip(anchors, sections)
    )
    return f"<table><tr><th>image</th><th>status</th><th>why</th></tr>{rows}</table>\n"


def paragraphs_html(text: str) -> str:
    """Plain-text paragraphs (blank-line separated) as HTML; ``*words*`` in italics."""
    return "".join(
        "<p>" + re.sub(r"\*([^*]+)\*", r"<em>\1</em>", escape(paragraph.strip())) + "</p>"
        for paragraph in text.split("\n\n") if paragraph.strip()
    )


def status_badge(status: str) -> str:
    return f'<span class="status status-{escape_attribute(status)}">{escape(status)}</span>'


def html_table(values: dict) -> str:
    """Two-column table; nested dicts become nested tables, other values JSON-like text."""
    rows = []
    for key, value in values.items():
        if key == "warnings":
            continue
        shown = html_table(value) if isinstance(value, dict) else escape(format_value(value))
        rows.append(f"<tr><th>{escape(key)}</th><td>{shown}</td></tr>")
    return f"<table>{''.join(rows)}</table>"


def format_value(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def escape(value) -> str:
    return html.escape(str(value), quote=False)


def escape_attribute(value) -> str:
    return html.escape(str(value), quote=True)
