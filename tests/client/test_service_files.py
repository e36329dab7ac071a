"""Service files (``pinnacle-update service install``) and the client's stderr logs (issue 21, item 6).

Real parts: an install directory initialised against a real signed repository, the real CLI in a
child process, ``systemd-analyze verify`` on the units (when the machine has it), plistlib and
ElementTree on the launchd and Task Scheduler files, and a real ``pinnacle-update serve`` whose
stderr is read as JSON lines and in journald's form.
"""

from __future__ import annotations

import io
import json
import logging
import os
import plistlib
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pinnacle_updates.client import service_files
from pinnacle_updates.client.cli import cli as cli_group
from pinnacle_updates.client.errors import ConfigError
from pinnacle_updates.formats import logs
from pinnacle_updates.formats.exitcodes import ExitCode
from tests.conftest import run_cli
from tests.helpers_client import ROOT, Repo, env, init_client, make_repo

TASK = "{http://schemas.microsoft.com/windows/2004/02/mit/task}"
EXE = Path(sys.executable).parent / "pinnacle-update"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return make_repo(tmp_path_factory.mktemp("svc-repo"))


@pytest.fixture
def install_dir(tmp_path: Path, repo: Repo) -> Path:
    # A space and a '%' in the path: both need escaping in a unit, neither may break a file.
    d = tmp_path / "my app 100%"
    init_client(d, str(repo.dir), repo, check_interval=900)
    return d


def service(install_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The command in a child process, as an operator runs it."""
    return run_cli("pinnacle-update", "--install-dir", str(install_dir), "service", "install", *args, check=check)


def cli(*args: str) -> Result:
    """The CLI in process (the group's own main: real exit codes and one-line errors), to keep the
    file fast on a shared machine; the child-process path is covered by the tests using ``service``."""
    result = CliRunner().invoke(cli_group, list(args), prog_name="pinnacle-update")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    return result


def svc(install_dir: Path, *args: str) -> Result:
    return cli("--install-dir", str(install_dir), "service", "install", *args)


# ----- systemd ------------------------------------------------------------------------------------
def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_systemd_units_are_hardened_absolute_and_pass_systemd_analyze(install_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "units"
    out = service(install_dir, "--kind", "systemd", "--dest", str(dest), "--name", "demo", "--user", "daemon").stdout
    names = sorted(p.name for p in dest.iterdir())
    assert names == ["demo-check.service", "demo-check.timer", "demo.service"]
    assert "systemctl enable --now demo.service" in out and "/etc/systemd/system/" in out  # what to run next
    agent = _directives((dest / "demo.service").read_text())
    # the venv's python may resolve into a home (pyenv under /root here): then homes stay readable
    python = Path(os.path.realpath(sys.executable))
    protect_home = "read-only" if python.parts[1] in ("home", "root") else "yes"
    check = _directives((dest / "demo-check.service").read_text())
    for unit in (agent, check):
        for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", protect_home),
                           ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"), ("User", "daemon"),
                           ("CapabilityBoundingSet", "")]:
            assert unit[key] == [value], (key, unit.get(key))
        assert unit["ReadWritePaths"] == ['"' + str(install_dir).replace("%", "%%") + '"']
        assert unit["WorkingDirectory"] == [str(install_dir).replace("%", "%%")]
        # the install dir is under the test's /tmp: PrivateTmp= would hide it, so it is left out there
        assert "PrivateTmp" not in unit
    assert agent["ExecStart"] == [f'{EXE} --install-dir "{str(install_dir).replace("%", "%%")}" serve']
    assert check["ExecStart"][0].endswith(" install --unattended --wait") and check["Type"] == ["oneshot"]
    timer = _directives((dest / "demo-check.timer").read_text())
    assert timer["OnUnitActiveSec"] == ["900s"] and timer["Unit"] == ["demo-check.service"]

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here: the units were checked field by field only")
    proc = subprocess.run([analyze, "verify", *(str(dest / n) for n in names)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "demo" not in proc.stderr  # no warning about our units (other units' noise is not ours)


def test_systemd_sandbox_rules_for_homes_and_tmp() -> None:
    def sandbox(install_dir: str) -> dict[str, list[str]]:
        spec = service_files.ServiceSpec(Path(install_dir), ("/usr/bin/pinnacle-update",), "x", 3600)
        return _directives("\n".join(service_files._sandbox(spec)))

    assert sandbox("/opt/app")["ProtectHome"] == ["yes"] and sandbox("/opt/app")["PrivateTmp"] == ["yes"]
    # an install dir in a home stays reachable (read-only home, the dir itself writable)
    home = sandbox("/home/alice/app")
    assert home["ProtectHome"] == ["read-only"] and home["ReadWritePaths"] == ["/home/alice/app"]
    assert "PrivateTmp" not in sandbox("/var/tmp/app")


def test_a_console_script_whose_python_lives_in_a_home_keeps_homes_readable(tmp_path: Path) -> None:
    script = tmp_path / "pinnacle-update"
    script.write_text("#!/home/alice/.pyenv/versions/3.12/bin/python\nimport sys\n")
    spec = service_files.ServiceSpec(Path("/opt/app"), (str(script),), "x", 3600)
    assert "/home/alice/.pyenv/versions/3.12/bin/python" in map(str, service_files.needed_paths(spec))
    assert "ProtectHome=read-only" in service_files._sandbox(spec)
    script.write_text("#!/usr/bin/python3\n")
    assert "ProtectHome=yes" in service_files._sandbox(spec)


def test_systemd_print_matches_what_is_written(install_dir: Path, tmp_path: Path) -> None:
    printed = svc(install_dir, "--kind", "systemd", "--print", "--json").stdout
    doc = json.loads(printed)
    assert svc(install_dir, "--kind", "systemd", "--dest", str(tmp_path / "w")).exit_code == 0
    assert {f["name"]: f["text"] for f in doc["files"]} == {
        p.name: p.read_text() for p in (tmp_path / "w").iterdir()
    }
    assert doc["command"] == [str(EXE)] and Path(doc["command"][0]).is_absolute()
    text = svc(install_dir, "--kind", "systemd", "--print").stdout
    assert text.startswith(f"==> {doc['name']}.service <==\n")


# ----- launchd --------------------------------------------------------------------------------------
def test_launchd_plists_parse_and_name_absolute_paths(install_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "plists"
    assert not (install_dir / "logs").exists()
    assert svc(install_dir, "--kind", "launchd", "--dest", str(dest), "--name", "demo").exit_code == 0
    assert (install_dir / "logs").is_dir()  # launchd opens StandardErrorPath there and makes no directory
    agent = plistlib.loads((dest / "org.pinnacle-updates.demo.agent.plist").read_bytes())
    check = plistlib.loads((dest / "org.pinnacle-updates.demo.check.plist").read_bytes())
    assert agent["ProgramArguments"] == [str(EXE), "--install-dir", str(install_dir), "serve"]
    assert agent["RunAtLoad"] is True and agent["KeepAlive"] == {"SuccessfulExit": False}
    assert check["ProgramArguments"][-3:] == ["install", "--unattended", "--wait"]
    assert check["StartInterval"] == 900 and "KeepAlive" not in check
    for doc in (agent, check):
        assert Path(doc["ProgramArguments"][0]).is_absolute() and Path(doc["ProgramArguments"][0]).is_file()
        assert doc["WorkingDirectory"] == str(install_dir) and Path(doc["WorkingDirectory"]).is_absolute()
    # --print --json carries the same documents
    printed = json.loads(svc(install_dir, "--kind", "launchd", "--print", "--json", "--name", "demo").stdout)
    assert [plistlib.loads(f["text"].encode()) for f in printed["files"]] == [agent, check]


# ----- Windows --------------------------------------------------------------------------------------
def test_windows_task_xml_parses_and_the_recipe_registers_it(install_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "tasks"
    assert svc(install_dir, "--kind", "windows", "--dest", str(dest), "--name", "demo", "--user",
               "svc-updates").exit_code == 0
    assert sorted(p.name for p in dest.iterdir()) == ["demo-agent.xml", "demo-check.xml", "demo-register.cmd"]
    raw = (dest / "demo-check.xml").read_bytes()
    assert raw[:2] in (b"\xff\xfe", b"\xfe\xff")  # UTF-16 with a BOM, as Task Scheduler exports them
    check = ET.fromstring(raw)
    agent = ET.parse(dest / "demo-agent.xml").getroot()
    for task in (agent, check):
        assert task.tag == f"{TASK}Task"
        command = task.findtext(f"{TASK}Actions/{TASK}Exec/{TASK}Command")
        assert command == str(EXE)
        assert task.findtext(f"{TASK}Actions/{TASK}Exec/{TASK}WorkingDirectory") == str(install_dir)
        assert task.findtext(f"{TASK}Principals/{TASK}Principal/{TASK}UserId") == "svc-updates"
    args = check.findtext(f"{TASK}Actions/{TASK}Exec/{TASK}Arguments")
    assert args == f'--install-dir "{install_dir}" install --unattended --wait'
    assert check.findtext(f"{TASK}Triggers/{TASK}TimeTrigger/{TASK}Repetition/{TASK}Interval") == "PT15M"
    assert agent.find(f"{TASK}Triggers/{TASK}BootTrigger") is not None
    recipe = (dest / "demo-register.cmd").read_bytes().decode()
    assert '/TN "pinnacle-update\\demo-agent" /XML "%~dp0demo-agent.xml"' in recipe and "\r\n" in recipe


# ----- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "code", "says"), [
    ((), ExitCode.USAGE, "give either --print or --dest DIR"),
    (("--print", "--dest", "x"), ExitCode.USAGE, "give either --print or --dest DIR"),
    (("--print", "--kind", "upstart"), ExitCode.USAGE, "'upstart' is not one of"),
    (("--print", "--name", "../evil"), ConfigError.exit_code, "service name '../evil' is not allowed"),
    (("--print", "--name", "a\nb"), ConfigError.exit_code, "is not allowed"),
    (("--print", "--user", "bad\nUser=root"), ConfigError.exit_code, "holds a control character"),
])  # fmt: skip
def test_bad_options_are_one_line_with_their_code(install_dir: Path, args: tuple[str, ...], code: int,
                                                   says: str) -> None:
    result = svc(install_dir, *args)
    assert result.exit_code == code, result.stderr
    assert says in result.stderr and len(result.stderr.strip().splitlines()) <= 3
    assert result.stdout == ""


def test_uninitialised_dir_and_unwritable_dest_are_refused(install_dir: Path, tmp_path: Path) -> None:
    result = svc(tmp_path / "nothing", "--print")
    assert result.exit_code == ConfigError.exit_code and "no config at" in result.stderr
    assert not (tmp_path / "nothing").exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = svc(install_dir, "--dest", str(blocker / "sub"))
    assert result.exit_code == ConfigError.exit_code, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"pinnacle-update: error: cannot write the service files into {blocker / 'sub'}: Not a directory"]


def test_spec_refuses_relative_paths() -> None:
    with pytest.raises(ConfigError, match="absolute"):
        service_files.check_spec(service_files.ServiceSpec(Path("rel"), ("/bin/x",), "n", 60))
    with pytest.raises(ConfigError, match="absolute"):
        service_files.check_spec(service_files.ServiceSpec(Path("/abs"), ("x",), "n", 60))


def test_unattended_takes_no_version(install_dir: Path) -> None:
    result = cli("--install-dir", str(install_dir), "install", "--unattended", "1.0")
    assert result.exit_code == ExitCode.USAGE and "--unattended installs what policy picks" in result.stderr


def test_unattended_install_with_nothing_published_does_nothing(install_dir: Path) -> None:
    # what the timer runs, on a repository with no release yet: exit 0, nothing installed
    result = cli("--install-dir", str(install_dir), "install", "--unattended", "--wait", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["outcome"] == "up_to_date"


# ----- logs -----------------------------------------------------------------------------------------
def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    """A logger of its own (not the root's handlers, which a test runner owns) writing to ``handler``."""
    log = logging.getLogger(f"{name}.{id(handler)}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    return log


def test_log_formats_text_json_and_journald(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_url = "https://alice:hunter2@updates.example/repo/"
    for fmt in logs.LOG_FORMATS:
        stream = io.StringIO()
        handler = logs.stderr_handler(fmt, logging.INFO, stream=stream)
        log = _logger("pinnacle.updater", handler)
        log.warning("update failed: %s", secret_url)
        log.debug("below the level")
        line = stream.getvalue()
        assert "hunter2" not in line and "below the level" not in line and line.count("\n") == 1
        if fmt == "json":
            doc = json.loads(line)
            assert set(doc) == {"ts", "level", "logger", "message"}
            assert (doc["level"], doc["logger"]) == ("warning", log.name)
            assert doc["ts"].endswith("Z") and doc["message"].startswith("update failed: https://")
        else:
            ts, level, rest = line.split(" ", 2)
            assert ts.endswith("Z") and level == "WARNING" and rest.startswith(f"{log.name}: update failed:")

    # under systemd: JOURNAL_STREAM names the very stream stderr is -> "<N>" priorities, no time
    with open(tmp_path / "journal", "w+") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.under_journald(stream)
        handler = logs.stderr_handler("text", logging.DEBUG, stream=stream)
        log = _logger("pinnacle.agent", handler)
        log.error("two\nlines")
        log.info("done")
        handler.flush()
        stream.seek(0)
        assert stream.read().splitlines() == [f"<3>{log.name}: two", f"<3>{log.name}: lines", f"<6>{log.name}: done"]
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")  # inherited, stderr elsewhere
        assert not logs.under_journald(stream)


def test_log_format_setting_and_flag_are_validated(install_dir: Path) -> None:
    d = ("--install-dir", str(install_dir))
    result = cli(*d, "config", "set", "log_format", "xml")
    assert result.exit_code == ConfigError.exit_code and "must be one of text, json" in result.stderr
    assert cli(*d, "config", "set", "log_format", "json").exit_code == 0
    result = cli(*d, "--log-format", "yaml", "status")
    assert result.exit_code == ExitCode.USAGE and "'yaml' is not one of 'text', 'json'" in result.stderr
    result = CliRunner(env={"PINNACLE_LOG_FORMAT": "yaml"}).invoke(cli_group, [*d, "status"])
    assert result.exit_code == ExitCode.USAGE


def _serve_stderr(install_dir: Path, tmp_path: Path, *flags: str, journal: bool = False) -> str:
    """Start ``pinnacle-update [flags] serve``, wait until it serves, stop it; its stderr."""
    err_path = tmp_path / "stderr.log"
    with open(err_path, "w") as err:
        extra = {}
        if journal:
            st = os.fstat(err.fileno())
            extra["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "pinnacle_updates.client", "--install-dir", str(install_dir), *flags,
             "serve", "--port", "0"],
            cwd=ROOT, env={**env(), **extra}, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("serving "), err_path.read_text()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return err_path.read_text()


def test_agent_logs_json_lines_and_journald_lines(install_dir: Path, tmp_path: Path) -> None:
    token = cli("--install-dir", str(install_dir), "token").stdout.strip()
    text = _serve_stderr(install_dir, tmp_path, "--log-format", "json")
    docs = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert docs and all(set(d) >= {"ts", "level", "logger", "message"} for d in docs)
    assert any(d["message"].startswith("agent starting on http://127.0.0.1:") and d["level"] == "info" for d in docs)
    assert token not in text

    # the config key alone, under systemd: journald's form, no time prefix
    assert cli("--install-dir", str(install_dir), "config", "set", "log_format", "text").exit_code == 0
    lines = [line for line in _serve_stderr(install_dir, tmp_path, journal=True).splitlines() if line]
    assert any(line.startswith("<6>pinnacle.agent.http: agent starting on http://127.0.0.1:") for line in lines)
    assert all(line[:1] == "<" and line[2] == ">" for line in lines), lines


def _warning_setup(install_dir: Path, tmp_path: Path) -> None:
    """A check that fails (no repository there) and a report that cannot be spooled (``reports`` is a
    file): the command logs a warning, then fails with its one error line."""
    d = ("--install-dir", str(install_dir))
    for key, value in [("report", "on"), ("report_url", "http://127.0.0.1:9/"),
                       ("repo_url", str(tmp_path / "no-repository"))]:
        assert cli(*d, "config", "set", key, value).exit_code == 0
    (install_dir / "reports").write_text("not a directory")


def test_commands_log_json_lines_or_journald_lines(install_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from pinnacle_updates.client.errors import RepositoryError

    _warning_setup(install_dir, tmp_path)
    d = ("--install-dir", str(install_dir))
    # The flag sets PINNACLE_LOG_FORMAT for the agent in the same process: this makes monkeypatch
    # restore the variable's absence afterwards (the flag overrides the value).
    monkeypatch.setenv(logs.ENV_FORMAT, "text")
    result = cli(*d, "--log-format", "json", "check")
    assert result.exit_code == RepositoryError.exit_code
    log_line, error_line = result.stderr.splitlines()
    doc = json.loads(log_line)
    assert (doc["level"], doc["logger"]) == ("warning", "pinnacle.reports")
    assert doc["message"].startswith("failed-check report not spooled:") and doc["ts"].endswith("Z")
    assert error_line.startswith("pinnacle-update: error: timestamp metadata is not on the repository")

    # the config key alone, in a child process whose stderr is the journal stream: <4>, no time
    assert cli(*d, "config", "set", "log_format", "text").exit_code == 0
    monkeypatch.delenv(logs.ENV_FORMAT)  # else it would win over the config key
    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err:
        st = os.fstat(err.fileno())
        proc = subprocess.run([sys.executable, "-m", "pinnacle_updates.client", *d, "check"], cwd=ROOT,
                              env={**env(), "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stderr=err,
                              stdout=subprocess.PIPE, text=True, timeout=120, check=False)
    assert proc.returncode == RepositoryError.exit_code
    first, second = err_path.read_text().splitlines()
    assert first.startswith("<4>pinnacle.reports: failed-check report not spooled:"), first
    assert second.startswith("pinnacle-update: error: ")
