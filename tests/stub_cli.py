"""Run the ``refacebids`` command in a process of its own with the stub engine of conftest.

For the tests that need the command as a separate process (two runs at once, a run as
another user): ``python -m tests.stub_cli BIDS_DIR OUTPUT_DIR participant ...``.
``REFACEBIDS_TEST_STUB_DELAY`` (seconds) makes each image take that long.
"""

import sys
import types

from refacebids.cli.run import main
from tests.conftest import _stub_init_reface_wf

if __name__ == "__main__":
    stub = types.ModuleType("refacebids.workflows.reface")
    stub.init_reface_wf = _stub_init_reface_wf
    sys.modules["refacebids.workflows.reface"] = stub
    sys.exit(main(sys.argv[1:]))
