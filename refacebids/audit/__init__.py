"""Re-identification audit: how often an open face recogniser still matches refaced images.

Optional: needs ``pip install 'refacebids[audit]'`` (dlib and the weights package).
"""

from .group import run_group_audit
from .recogniser import INSTALL_HINT, AuditUnavailable

__all__ = ["INSTALL_HINT", "AuditUnavailable", "run_group_audit"]
