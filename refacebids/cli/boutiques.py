"""The Boutiques descriptor of refacebids (CBRAIN and similar platforms), from the parser.

    python -m refacebids.cli.boutiques [refacebids.boutiques.json]

The descriptor is derived from :func:`refacebids.cli.parser.build_parser`, so that it
cannot drift from the command line; ``tests/test_boutiques.py`` regenerates it and
compares it with the committed file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import __version__
from ..utils.atomic import write_text
from .parser import _positive_float, _positive_int, build_parser

SCHEMA_VERSION = "0.5"
# Path arguments refacebids writes to: the platform passes a name, not an existing file.
WRITTEN_PATHS = ("output_dir", "work_dir")
# Defaults that depend on the machine the descriptor was generated on.
MACHINE_DEFAULTS = ("nprocs",)
REPOSITORY = "https://github.com/refacebids/refacebids"


def descriptor() -> dict:
    """The Boutiques (schema 0.5) descriptor of the ``refacebids`` command."""
    parser = build_parser()
    inputs = [_input(action) for action in parser._actions if _is_input(action)]
    return {
        "name": "refacebids",
        "tool-version": __version__,
        "description": parser.description,
        "author": "The refacebids developers",
        "url": REPOSITORY,
        "command-line": " ".join(["refacebids", *(item["value-key"] for item in inputs)]),
        "schema-version": SCHEMA_VERSION,
        "container-image": {"type": "docker", "image": f"refacebids:{__version__}"},
        "inputs": inputs,
        "output-files": [{
            "id": "refaced_dataset",
            "name": "Refaced dataset",
            "description": "OUTPUT_DIR: the derivatives dataset, or the refaced copy of the "
                           "input (--output-layout release)",
            "path-template": "[OUTPUT_DIR]",
            "optional": False,
        }],
        "suggested-resources": {"cpu-cores": 2, "ram": 2, "walltime-estimate": 600},
        "tags": {"domain": ["neuroinformatics", "mri", "bids", "de-identification"]},
        "error-codes": [
            {"code": 1, "description": "at least one selected image was not refaced (one "
                                       "line per image on stderr), or no image was processed"},
            {"code": 2, "description": "command-line error"},
        ],
    }


def _is_input(action: argparse.Action) -> bool:
    return not isinstance(action, (argparse._HelpAction, argparse._VersionAction))


def _input(action: argparse.Action) -> dict:
    positional = not action.option_strings
    item = {
        "id": action.dest,
        "name": action.option_strings[0] if action.option_strings else action.dest.upper(),
        "description": (action.help or "").replace("%%", "%"),  # argparse's escape
        "value-key": f"[{action.dest.upper()}]",
        "optional": not positional and not action.required,
    }
    if not positional:
        item["command-line-flag"] = action.option_strings[0]
    if isinstance(action, argparse._StoreTrueAction):
        item["type"] = "Flag"
        return item
    if action.type in (_positive_int, _positive_float, int, float):
        item["type"] = "Number"
        item["integer"] = action.type in (_positive_int, int)
        if action.type in (_positive_int, _positive_float):
            item["minimum"] = 1 if action.type is _positive_int else 0
            item["exclusive-minimum"] = action.type is _positive_float
    elif action.type is Path and action.dest not in WRITTEN_PATHS:
        item["type"] = "File"
    else:
        item["type"] = "String"
    if action.nargs in ("+", "*"):
        item["list"] = True
    if action.choices:
        item["value-choices"] = list(action.choices)
    if action.default is not None and not positional and action.dest not in MACHINE_DEFAULTS:
        default = action.default
        item["default-value"] = str(default) if isinstance(default, Path) else default
    return item


def descriptor_text() -> str:
    """The descriptor as it is committed: indented JSON, one trailing newline."""
    return json.dumps(descriptor(), indent=2) + "\n"


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    target = Path(args[0] if args else "refacebids.boutiques.json")
    write_text(target, descriptor_text())
    print(f"written {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
