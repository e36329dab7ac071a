"""The layer contracts in pyproject.toml hold on the tree, and each one fails on a planted import.

``make test`` runs ``lint-imports`` on the real tree; these tests prove the contracts can fail: each
plants one forbidden import into a copy of the package and expects ``lint-imports`` to name the
broken contract.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the project's contracts over the ``pinnacle_updates`` found in ``package_parent``
    (first on the path, so the editable install's finder never answers)."""
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=package_parent, env=env, capture_output=True, text=True, check=False)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The package copied with its linked folders resolved, so a planted import never touches the tree."""
    shutil.copytree(ROOT / "pinnacle_updates", tmp_path / "pinnacle_updates", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_tree_keeps_every_contract() -> None:
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "broken" not in proc.stdout.lower().replace("0 broken", "")


PLANTED_IMPORTS = {  # module -> (the import planted into it, words of the contract it must break)
    "client/hooks.py": ("from pinnacle_updates.repo_tools import errors", "never import each other"),
    "repo_tools/prune.py": ("from pinnacle_updates.client import errors", "never import each other"),
    "formats/index.py": ("import pinnacle_updates.client.errors", "neutral layer imports neither side"),
    "formats/rollout.py": ("import httpx", "pure core"),
    "client/policy.py": ("import subprocess", "pure core"),
    "repo_tools/core/window.py": ("from pinnacle_updates.formats import fsutil", "pure core"),
    "client/config.py": ("import client", "one installed namespace"),
    "repo_tools/commands/fleet.py": ("from pinnacle_updates.repo_tools.commands import trust", "commands.options"),
    "repo_tools/commands/options.py": ("import pinnacle_updates.repo_tools.cli", "commands.options"),
    "client/agent/service.py": ("import pinnacle_updates.client.slots", "only the client's public API"),
    "client/agent/notify.py": ("from pinnacle_updates.client.installer import Installer", "public API"),
}


@pytest.mark.parametrize(("module", "planted", "contract"), [(m, *pc) for m, pc in PLANTED_IMPORTS.items()])
def test_a_planted_forbidden_import_breaks_its_contract(copy: Path, module: str, planted: str, contract: str) -> None:
    path = copy / "pinnacle_updates" / module
    path.write_text(path.read_text() + f"\n{planted}  # planted by the test\n")
    proc = lint_imports(copy)
    assert proc.returncode != 0
    broken = [line for line in proc.stdout.splitlines() if line.endswith(" BROKEN")]
    assert any(contract in line for line in broken), proc.stdout
