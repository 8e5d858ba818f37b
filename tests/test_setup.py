"""scripts/setup: the interpreter floor is stated once and refused clearly below it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup"


def test_floor_is_the_same_in_pyproject_and_setup_and_holds_here():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^requires-python = ">=3\.11\.2"$', pyproject, re.M)
    text = SETUP.read_text()
    assert "PYTHON=/usr/bin/python3\n" in text
    assert "sys.version_info < (3, 11, 2)" in text
    assert sys.version_info >= (3, 11, 2)


def _fake_tools(bin_dir: Path, python_version: str) -> Path:
    """dpkg-query and locale that report everything present; a python3 of ``python_version``."""
    bin_dir.mkdir()
    scripts = {
        "dpkg-query": "#!/bin/sh\nprintf 'install ok installed'\n",
        "locale": "#!/bin/sh\nprintf 'C\\nC.utf8\\nPOSIX\\ntr_TR.utf8\\n'\n",
        "python3": f"#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'Python {python_version}'; exit 0; fi\nexit 1\n",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return bin_dir / "python3"


def test_setup_refuses_an_interpreter_below_the_floor(tmp_path):
    python = _fake_tools(tmp_path / "bin", "3.11.1")
    (tmp_path / "scripts").mkdir()
    copy = tmp_path / "scripts" / "setup"
    copy.write_text(SETUP.read_text().replace("PYTHON=/usr/bin/python3\n", f"PYTHON={python}\n", 1))
    p = subprocess.run(["bash", str(copy)], capture_output=True, text=True,
                       env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert p.returncode == 2, p.stderr
    assert p.stderr == (f"setup: blindbox-guest needs Python 3.11.2 or newer as {python} (the distribution's "
                        f"own), and Python 3.11.1 is installed there; use Debian 12 (bookworm) or newer.\n")
    assert not (tmp_path / ".venv").exists()
