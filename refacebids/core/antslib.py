"""ANTs' command-line tools as antspyx compiled them, called without ``import ants``.

``import ants`` loads antspyx's plotting, statistics and deep-learning layers with it
(matplotlib, statsmodels, scikit-learn): 2 s of every engine process's start on an idle
2-core machine, 4-7 s on a busy one, for modules the engine never uses. The engine only
runs ``antsRegistration`` and ``antsApplyTransforms`` on files, which the compiled
library (``ants/lib*.so``, what antspyx's own ``get_lib_fn`` returns functions of) runs
from a list of command-line arguments; it is loaded here by itself, and registered under
its own name so that a later ``import ants`` in the process finds it rather than loading
it twice. Should antspyx ever lay its package out differently, ``import ants`` is the
way back.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import lru_cache
from pathlib import Path

LIBRARY = "ants.lib"


@lru_cache(maxsize=1)
def library():
    """antspyx's compiled ANTs library (the module ``ants.lib``)."""
    if LIBRARY in sys.modules:
        return sys.modules[LIBRARY]
    package = importlib.util.find_spec("ants")  # finds the package without running it
    found = sorted(Path(package.origin).parent.glob("lib.*.so")) if package and package.origin else []
    if not found:
        import ants

        return ants.lib
    spec = importlib.util.spec_from_file_location(LIBRARY, found[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[LIBRARY] = module
    return module


def run(tool: str, arguments: list[str]) -> None:
    """Run one ANTs tool (``antsRegistration``, ``antsApplyTransforms``) on files.

    Raises
    ------
    RuntimeError
        Naming the tool and its exit code when it fails.
    """
    code = getattr(library(), tool)([str(argument) for argument in arguments])
    if code != 0:
        raise RuntimeError(f"{tool} failed with exit code {code}")


def version() -> str:
    """antspyx's version, from its package metadata (no import)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("antspyx")
    except PackageNotFoundError:
        return "unknown"
