"""Host tools the tests cross-check against; scripts/setup installs every one of them.

CI runs scripts/setup before the tests, so a missing tool is a broken setup, not a reason
to skip: the test fails and says which Debian package to install.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require(tool: str, package: str) -> str:
    """The path of ``tool`` (also looked up in the sbin directories); fail the test if absent."""
    path = shutil.which(tool) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := os.path.join(d, tool), os.X_OK)), None)
    if path is None:
        pytest.fail(f"{tool} is not installed: run scripts/setup, which installs the Debian package "
                    f"{package} (CI runs it before the tests).", pytrace=False)
    return path
