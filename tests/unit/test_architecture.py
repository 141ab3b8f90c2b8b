"""The layout's promises: imports point one way, the pure core does no I/O, and
the one-shot CLI loads nothing it does not use."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "orchestrator"
# Each folder may import itself and what is listed (cli/service at the top).
ALLOWED = {
    "core": set(),
    "catalog": {"core"},
    "engines": {"core"},
    "registry": {"core"},
    "build": {"core", "catalog", "engines", "registry"},
    "service": {"core", "catalog", "engines", "registry", "build"},
    "cli": {"core", "catalog", "engines", "registry", "build", "service"},
}
CORE_FORBIDDEN = {"asyncio", "subprocess", "socket", "sqlite3", "aiohttp", "http",
                  "urllib.request", "shutil"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_imports_point_one_way() -> None:
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) < 2:
            continue
        here = parts[0]
        for module in imports_of(path):
            if not module.startswith("orchestrator."):
                continue
            there = module.split(".")[1]
            if there != here and there in ALLOWED and there not in ALLOWED[here]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert wrong == []


def test_the_core_is_pure() -> None:
    wrong = []
    for path in (PACKAGE / "core").glob("*.py"):
        for module in imports_of(path):
            if module in CORE_FORBIDDEN or module.split(".")[0] in CORE_FORBIDDEN:
                wrong.append(f"core/{path.name} imports {module}")
    assert wrong == []


def test_the_one_shot_path_loads_no_daemon_code() -> None:
    code = ("import orchestrator.cli.main, orchestrator.build.runs, orchestrator.cli.render, "
            "orchestrator.cli.progress")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                          capture_output=True, text=True, check=True)
    loaded = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
              if line.startswith("import time:")}
    heavy = {name for name in loaded if name.split(".")[0] in {
        "aiohttp", "prometheus_client", "watchfiles", "rich", "structlog", "cyclonedx",
        "cryptography"}}
    daemon = {name for name in loaded if name.startswith("orchestrator.service")}
    assert heavy == set() and daemon == set()
