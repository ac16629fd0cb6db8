"""Screenshots of the demo's reports for the README, taken in headless Chromium.

Run from the repository root after the README's run command (participant and group
levels on ``demo/ds-demo``)::

    python docs/make_report_screenshots.py demo-output

writes ``docs/figures/report_group.png`` and ``docs/figures/report_subject.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.browser import Chromium  # noqa: E402

SHOTS = {  # page -> (figure, width and height shown in CSS pixels)
    "group_report.html": ("report_group.png", 1600, 900),
    "sub-02.html": ("report_subject.png", 1000, 1400),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="output of the demo run")
    parser.add_argument("--figures", type=Path, default=REPO / "docs" / "figures")
    args = parser.parse_args()
    with Chromium() as browser:
        for page, (figure, width, height) in SHOTS.items():
            browser.open(args.output_dir / page, width=width)
            if not all(image["width"] > 0 for image in browser.images()):
                raise SystemExit(f"{page}: an image did not load")
            print(browser.screenshot(args.figures / figure, max_height=height))


if __name__ == "__main__":
    main()
