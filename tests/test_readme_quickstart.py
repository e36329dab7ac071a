"""README.md as the front door stays true: its quick-start blocks run as written (issue 21, item 5).

Each fenced block after a ``<!-- quickstart: NAME -->`` comment is run by bash (``-eu``, so any failing
command fails the block) in one fresh temporary directory, one after the other as the README tells
a reader to, with the venv's bin/ first on PATH and nothing of this checkout's environment
(no PINNACLE_* variable) leaking in. The repository the blocks serve runs on 127.0.0.1 on a free port
(``PORT``, which the end-client block reads). The install lines, extras, wheel name and settings
the README names are checked against pyproject.toml and ``client.config``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pinnacle_updates.client import config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"<!-- quickstart: ([a-z0-9-]+) -->\n```sh\n(.*?)\n```", re.DOTALL)


def blocks() -> dict[str, str]:
    return dict(BLOCK.findall(README))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_block(name: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINNACLE_")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    proc = subprocess.run(["bash", "-eu", "-c", blocks()[name]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=180, check=False)
    assert proc.returncode == 0, f"README block {name!r} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def test_the_quick_start_blocks_run_as_written(tmp_path: Path) -> None:
    assert list(blocks()) == ["release-engineer", "end-client", "ci"]
    passphrase = re.search(r"export PINNACLE_KEY_PASSPHRASE='([^']*)'", blocks()["release-engineer"])
    assert passphrase, "the release engineer's block sets the key passphrase"

    run_block("release-engineer", tmp_path)
    assert (tmp_path / "repo" / "metadata" / "1.root.json").is_file()

    client = run_block("end-client", tmp_path, PORT=str(free_port()))
    assert "hello 1.0.0" in client.stdout  # what the block's comment promises `run` prints
    units = sorted(p.name for p in (tmp_path / "units").iterdir())
    assert units == ["pinnacle-update-myapp-check.service", "pinnacle-update-myapp-check.timer",
                     "pinnacle-update-myapp.service"]

    run_block("ci", tmp_path, PINNACLE_KEY_PASSPHRASE=passphrase.group(1))
    text = (tmp_path / "publish.jsonl").read_text()
    try:  # one JSON document ...
        result = json.loads(text)
    except json.JSONDecodeError:  # ... or progress events, one a line, with the result last
        result = json.loads(text.splitlines()[-1])
    assert result["release"]["version"] == "1.1.0"


def test_the_ci_block_refuses_to_run_without_its_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINNACLE_")}
    proc = subprocess.run(["bash", "-eu", "-c", blocks()["ci"]], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "set it from the CI secret store" in proc.stderr
    assert not (tmp_path / "publish.jsonl").exists()


def test_the_install_lines_match_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "make demo" in README and "make test" in README  # the setup contract
    assert "pip install 'pinnacle-updates[" not in README  # the package is on no public index
    wheel = f"dist/pinnacle_updates-{project['version']}-py3-none-any.whl"
    assert f"pip install '{wheel}[agent]'" in README, f"the README's wheel line should name {wheel}"
    for extra in re.findall(r"pip install '\.\[([a-z0-9]+)\]'", README):
        assert extra in project["optional-dependencies"], extra
    assert set(project["scripts"]) == {"pinnacle-release", "pinnacle-update"}


@pytest.mark.parametrize("key", sorted(config.KEYS))
def test_every_setting_is_in_the_readme_table(key: str) -> None:
    spec = config.KEYS[key]
    row = f"| `{key}` |"
    assert row in README, (f"README.md's settings table lacks {key}; add the row: "
                           f"| `{key}` | {spec.type.__name__} | {spec.help} |")
