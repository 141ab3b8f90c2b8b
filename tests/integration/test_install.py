"""README command 1 with Debian's python3 only: no pyenv on PATH, where pip is
missing (a fresh Debian 12) or refuses to install outside a venv (PEP 668)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="scripts/testbed install is root's")]


def test_install_uses_a_venv_of_debians_python(tmp_path: Path) -> None:
    venv, link = tmp_path / "venv", tmp_path / "bin" / "orchestrator"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYENV", "VIRTUAL_ENV", "PYTHON"))}
    env.update(PATH="/usr/sbin:/usr/bin:/sbin:/bin", TESTBED_VENV=str(venv),
               TESTBED_BIN_LINK=str(link))
    proc = subprocess.run([str(ROOT / "scripts" / "testbed"), "install"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert link.resolve() == (venv / "bin" / "orchestrator").resolve()
    version = subprocess.run([str(link), "--version"], capture_output=True, text=True,
                             env=env, timeout=60)
    assert version.stdout.startswith("orchestrator "), version.stderr
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import sys, orchestrator, pytest, mypy, ruff; "
         "print(orchestrator.__file__); print(sys.base_prefix)"],
        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    package, base = where.stdout.split()
    assert Path(package).is_relative_to(ROOT)  # editable: the clone's code runs
    assert base == "/usr"  # Debian's python3, not a pyenv build
