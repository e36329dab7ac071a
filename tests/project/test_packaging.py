"""The wheel installs one import namespace, ``pinnacle_updates``, and runs from it alone.

Embedding applications often have a ``client`` module of their own: a wheel that installed a
top-level ``client`` or ``repo_tools`` would shadow it (or be shadowed). These tests build the real
wheel with the venv's setuptools, read its file list, install it into an empty directory and run
both CLIs from there, with a working directory where no source folder is importable.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the source tree links client/ into the namespace")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out),
         str(ROOT)],
        capture_output=True, text=True, check=False, cwd=out,
    )
    assert proc.returncode == 0, proc.stderr
    (built,) = out.glob("pinnacle_updates-*.whl")
    return built


def test_the_wheel_holds_only_the_pinnacle_updates_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"pinnacle_updates", next(t for t in top if t.endswith(".dist-info"))}, top
    # the linked folders and the package data are really inside
    for wanted in ("pinnacle_updates/client/cli.py", "pinnacle_updates/repo_tools/cli.py",
                   "pinnacle_updates/formats/index.py", "pinnacle_updates/client/agent/static/dashboard.html",
                   "pinnacle_updates/client/demo_app/app.py"):
        assert wanted in names
    assert not any("/tests/" in n or n.startswith("tests/") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "pinnacle-release = pinnacle_updates.repo_tools.cli:main" in scripts
    assert "pinnacle-update = pinnacle_updates.client.cli:main" in scripts


def test_the_installed_wheel_runs_both_clis_without_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                           "--target", str(target), str(wheel)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    installed = {p.name for p in target.iterdir() if p.name not in ("bin", "__pycache__")}
    assert {n for n in installed if not n.endswith(".dist-info")} == {"pinnacle_updates"}, installed
    # An embedding application with its own top-level ``client`` module keeps it.
    app = tmp_path / "app"
    app.mkdir()
    (app / "client.py").write_text("WHO = 'the application'\n")
    env = {"PYTHONPATH": f"{app}:{target}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    probe = ("import client, pinnacle_updates, pinnacle_updates.client.cli, pinnacle_updates.repo_tools.cli\n"
             "print(client.WHO); print(pinnacle_updates.__file__)")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    who, where = proc.stdout.splitlines()
    assert who == "the application"
    assert Path(where).is_relative_to(target)
    for module in ("pinnacle_updates.client", "pinnacle_updates.repo_tools"):
        proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, check=False)
        assert proc.returncode == 0 and "Usage:" in proc.stdout, proc.stderr
