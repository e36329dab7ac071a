"""Shell conventions of both CLIs (issue 21, item 3): one exit-code table, documented; ``--help``
everywhere with no setup; usage errors as JSON under ``--json``; shell completion; messages that
name real flags. Fast: the click trees are walked in-process, a few commands run as real processes."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pinnacle_updates.client import errors as client_errors
from pinnacle_updates.client.cli import cli as update_cli
from pinnacle_updates.formats.exitcodes import MEANINGS, ExitCode, table
from pinnacle_updates.repo_tools import errors as release_errors
from pinnacle_updates.repo_tools.cli import cli as release_cli

ROOT = Path(__file__).resolve().parents[2]
CLIS = {"pinnacle-update": update_cli, "pinnacle-release": release_cli}
MODULES = {"pinnacle-update": "pinnacle_updates.client", "pinnacle-release": "pinnacle_updates.repo_tools"}


def _clean_env(tmp_path: Path) -> dict[str, str]:
    """No install directory, no keys, a fresh empty working directory: what a new user has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINNACLE_")}
    env["PYTHONPATH"] = str(ROOT)
    env["HOME"] = str(tmp_path)
    return env


def _run(tool: str, *args: str, tmp_path: Path,
         extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", MODULES[tool], *args], capture_output=True, text=True,
                          cwd=tmp_path, env={**_clean_env(tmp_path), **(extra or {})}, timeout=60, check=False)


# -- the table -----------------------------------------------------------------------------------------------
def test_one_meaning_per_code_and_every_error_class_in_the_table() -> None:
    assert len({int(c) for c in ExitCode}) == len(ExitCode)  # no alias: one code, one name
    assert set(MEANINGS) == set(ExitCode) and all(m and "\n" not in m for m in MEANINGS.values())
    assert (ExitCode.OK, ExitCode.INTERNAL, ExitCode.USAGE) == (0, 1, 2)  # the shell's and click's own
    for module, root in ((client_errors, client_errors.UpdateError), (release_errors, release_errors.ReleaseError)):
        classes = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, root)]
        assert len(classes) >= 8
        for cls in classes:
            assert isinstance(cls.exit_code, ExitCode), cls
    # the same meaning carries the same code on both sides
    assert client_errors.TrustError.exit_code == release_errors.VerificationFailed.exit_code == ExitCode.VERIFICATION
    assert client_errors.StateError.exit_code == release_errors.RepositoryStateError.exit_code == ExitCode.STATE
    assert client_errors.InstallRefused.exit_code == release_errors.PublishRefused.exit_code == ExitCode.REFUSED
    assert client_errors.UpdateError.exit_code == release_errors.ReleaseError.exit_code == ExitCode.INTERNAL


def test_the_documented_table_is_the_enum() -> None:
    """docs/OPERATIONS.md holds exactly ``exitcodes.table()``, and the README links to it."""
    ops = (ROOT / "docs" / "OPERATIONS.md").read_text()
    assert table() in ops
    rows = re.findall(r"^\| (\d+) \| `([A-Z_]+)` \| (.+) \|$", ops, re.MULTILINE)
    assert [(int(code), name) for code, name, _ in rows] == [(int(c), c.name) for c in ExitCode]
    assert "docs/OPERATIONS.md#exit-codes-and-shell-conventions" in (ROOT / "README.md").read_text()


# -- --help everywhere ---------------------------------------------------------------------------------------
def _commands(group: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(group, click.Group):
        for name, sub in sorted(group.commands.items()):
            yield from _commands(sub, (*path, name))


@pytest.mark.parametrize("tool", sorted(CLIS))
def test_help_of_every_command_and_group_needs_nothing_else(tool: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("PINNACLE_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    paths = list(_commands(CLIS[tool]))
    assert len(paths) > 15
    for path in paths:
        result = CliRunner().invoke(CLIS[tool], [*path, "--help"], prog_name=tool)
        assert result.exit_code == 0, (path, result.output, result.exception)
        assert result.output.startswith(f"Usage: {' '.join((tool, *path))} "), (path, result.output[:200])
    assert list(tmp_path.iterdir()) == []  # --help created nothing


def test_help_as_a_user_types_it(tmp_path: Path) -> None:
    """The issue's own cases, as real processes: `serve --help` with no install directory, the demo's
    --help (which must not start the demo or write anything)."""
    for tool, args in (("pinnacle-update", ("serve", "--help")), ("pinnacle-update", ("--help",)),
                       ("pinnacle-release", ("collector", "serve", "--help"))):
        proc = _run(tool, *args, tmp_path=tmp_path)
        assert proc.returncode == ExitCode.OK and proc.stdout.startswith("Usage: "), proc.stderr
    demo = subprocess.run([sys.executable, "-m", "pinnacle_updates.client.demo", "--help"], capture_output=True,
                          text=True, cwd=tmp_path, env=_clean_env(tmp_path), timeout=60, check=False)
    assert demo.returncode == ExitCode.OK and "directory" in demo.stdout and "temporary" in demo.stdout, demo.stderr
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "x").write_text("mine\n")
    refused = subprocess.run([sys.executable, "-m", "pinnacle_updates.client.demo", str(occupied)],
                             capture_output=True, text=True, cwd=tmp_path, env=_clean_env(tmp_path), timeout=60,
                             check=False)
    assert refused.returncode == ExitCode.USAGE and "not an empty directory" in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]  # nothing in the working directory


# -- usage errors, plain and JSON ------------------------------------------------------------------------------
@pytest.mark.parametrize(("tool", "args", "words"), [
    ("pinnacle-update", ("status", "--json", "--bogus"), "No such option '--bogus'"),
    ("pinnacle-update", ("status", "--json"), "Missing option '--install-dir'"),
    ("pinnacle-update", ("nonsense", "--json"), "No such command 'nonsense'"),
    ("pinnacle-release", ("publish", "--json"), "Missing argument"),
    ("pinnacle-release", ("status", "--json", "--warn-days", "soon"), "'soon' is not a valid float"),
])  # fmt: skip
def test_usage_errors_are_json_under_json(tool: str, args: tuple[str, ...], words: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PINNACLE_INSTALL_DIR", raising=False)
    as_json = CliRunner().invoke(CLIS[tool], list(args), prog_name=tool)
    assert as_json.exit_code == ExitCode.USAGE, as_json.output
    error = json.loads(as_json.stdout.strip().splitlines()[-1])["error"]
    assert (error["code"], error["name"]) == (ExitCode.USAGE, "usage") and words in error["message"], error
    assert as_json.stderr == ""
    plain = CliRunner().invoke(CLIS[tool], [a for a in args if a != "--json"], prog_name=tool)
    assert plain.exit_code == ExitCode.USAGE and plain.stdout == ""
    assert plain.stderr.count("\n") == 1 and plain.stderr.startswith(f"{tool}: error: "), plain.stderr


def test_a_usage_error_as_a_process_prints_one_json_line(tmp_path: Path) -> None:
    proc = _run("pinnacle-update", "install", "--json", "--yes", "--bogus", tmp_path=tmp_path)
    assert proc.returncode == ExitCode.USAGE and proc.stderr == "", proc.stderr
    [line] = proc.stdout.splitlines()
    assert json.loads(line) == {"error": {"code": 2, "name": "usage", "message": "No such option '--bogus'. "
                                          "(see 'pinnacle-update install --help')"}}


# -- completion ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tool", sorted(CLIS))
def test_shell_completion_scripts_are_produced(tool: str, tmp_path: Path) -> None:
    var = f"_{tool.upper().replace('-', '_')}_COMPLETE"
    proc = _run(tool, tmp_path=tmp_path, extra={var: "bash_source"})  # as the documented eval line runs it
    assert proc.returncode == 0 and "complete -o nosort -F" in proc.stdout and var in proc.stdout, proc.stderr
    for shell, marker in (("zsh", "compdef"), ("fish", "complete --no-files")):
        result = CliRunner().invoke(CLIS[tool], [], prog_name=tool, env={var: f"{shell}_source"})
        assert result.exit_code == 0 and marker in result.stdout and var in result.stdout, (shell, result.output)
    # the script completes: bash asks with COMP_WORDS/COMP_CWORD and gets the commands that match
    words = {"pinnacle-update": ("pinnacle-update ro", "rollback"), "pinnacle-release": ("pinnacle-release pu",
                                                                                         "publish")}[tool]
    done = CliRunner().invoke(CLIS[tool], [], prog_name=tool,
                              env={var: "bash_complete", "COMP_WORDS": words[0], "COMP_CWORD": "1"})
    assert done.exit_code == 0 and f"plain,{words[1]}" in done.stdout.splitlines(), done.output


# -- messages name real flags ---------------------------------------------------------------------------------
def _options(command: click.Command, out: set[str]) -> set[str]:
    for param in command.params:
        out.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _options(sub, out)
    return out


def _string_constants() -> Iterator[tuple[Path, str]]:
    for base in ("client", "repo_tools"):
        for path in sorted((ROOT / base).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    yield path, node.value


def test_messages_name_flags_that_exist() -> None:
    """Every ``--flag`` a message or help text names is an option of one of the two CLIs (or
    ``--help``, or systemctl's ``--now`` in the service-file instructions); and no message tells a
    person to 'force' something without the flag's real spelling."""
    known = _options(update_cli, set()) | _options(release_cli, set()) | {"--help", "--now"}
    unknown = {(path.name, flag) for path, text in _string_constants()
               for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", text) if flag not in known}
    assert not unknown, unknown
    vague = {(path.name, text[:80]) for path, text in _string_constants()
             if re.search(r"(?<![-\w`])force (to|it)\b|needs force\b|with force\b", text)}
    assert not vague, vague
