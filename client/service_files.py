"""Service files for one install directory: systemd, launchd, Windows Task Scheduler.

``pinnacle-update service install`` prints or writes them; nothing here touches /etc, launchctl or
schtasks: the operator copies the files where they belong and runs the commands :func:`next_steps`
names. Each kind has two jobs, and an operator enables one of them:

* the **agent** (``pinnacle-update serve``): the update loop, the dashboard and API on 127.0.0.1:8004,
  kept running (restarted after a failure);
* the **check** (``pinnacle-update install --unattended --wait``), run every ``check_interval`` seconds
  by a timer (systemd), ``StartInterval`` (launchd) or a repeating trigger (Windows): what the agent's
  loop installs, without a resident process. ``--wait`` queues behind a running update instead of
  failing the run.

Every path is absolute: the install directory and the executable the files start (the console
script next to the running interpreter, or that interpreter with ``-m pinnacle_updates.client``). The
systemd units are sandboxed (``NoNewPrivileges``, ``ProtectSystem=strict`` with only the install
directory writable, ``PrivateTmp``, ``ProtectHome``, ``RestrictAddressFamilies`` ...); hooks
(``stop_command``, ``start_command``, ...) run inside that sandbox, which the unit's header says.
"""

from __future__ import annotations

import getpass
import os
import plistlib
import re
import subprocess
import sys
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pinnacle_updates.formats import fsutil

from .errors import ConfigError

KINDS = ("systemd", "launchd", "windows")
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A service name: what unit names, launchd labels and task names all accept."""

# Directories ProtectHome=yes hides; a service that needs a path below one gets read-only instead.
_HOME_ROOTS = (Path("/home"), Path("/root"), Path("/run/user"))
_TASK_NS = "http://schemas.microsoft.com/windows/2004/02/mit/task"


@dataclass(frozen=True)
class ServiceSpec:
    """What the files start, for which install directory."""

    install_dir: Path
    """Absolute."""
    command: tuple[str, ...]
    """The absolute executable (and its leading arguments, e.g. ``python -m ...``)."""
    name: str
    """Base name of units, labels and tasks (``NAME.service``, ``NAME-check.timer`` ...)."""
    check_interval: int
    """Seconds between unattended checks (the config's ``check_interval``)."""
    user: str | None = None
    """The account the jobs run as (systemd ``User=``, launchd ``UserName``); None = the manager's."""

    def argv(self, *args: str) -> list[str]:
        return [*self.command, "--install-dir", str(self.install_dir), *args]

    @property
    def agent_argv(self) -> list[str]:
        return self.argv("serve")

    @property
    def check_argv(self) -> list[str]:
        return self.argv("install", "--unattended", "--wait")


@dataclass(frozen=True)
class ServiceFile:
    name: str
    text: str
    encoding: str = "utf-8"
    """How the file is written (Task Scheduler wants its XML in UTF-16)."""


# ----- the spec ---------------------------------------------------------------------------------
def default_kind(platform: str = sys.platform) -> str:
    if platform == "darwin":
        return "launchd"
    if platform.startswith(("win", "cygwin")):
        return "windows"
    return "systemd"


def default_command() -> tuple[str, ...]:
    """The running client as an absolute command: the ``pinnacle-update`` console script beside the
    interpreter (a venv's bin/ or Scripts\\), else ``python -m pinnacle_updates.client``. The
    interpreter path is kept as is, not resolved: a venv's python is a link whose location is what
    selects the venv."""
    python = Path(os.path.abspath(sys.executable))
    for script in ("pinnacle-update", "pinnacle-update.exe"):
        candidate = python.parent / script
        if candidate.is_file():
            return (str(candidate),)
    return (str(python), "-m", "pinnacle_updates.client")


def default_name(install_dir: Path) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", install_dir.name).strip("-.") or "app"
    return f"pinnacle-update-{base}"[:64]


def default_user(install_dir: Path) -> str | None:
    """The owner of the install directory (the account that can write it), or None for root or
    where there are no such accounts."""
    try:
        import pwd

        uid = install_dir.stat().st_uid
        return None if uid == 0 else pwd.getpwuid(uid).pw_name
    except (ImportError, OSError, KeyError):
        return None


def check_spec(spec: ServiceSpec) -> None:
    """``ConfigError`` for what no service file can say safely: a relative path, a control character
    (a newline would end a unit's line and start a directive of its own), a bad name."""
    if not NAME_RULE.fullmatch(spec.name):
        raise ConfigError(f"service name {spec.name!r} is not allowed: letters, digits, '_', '.', '-' "
                          "(at most 64, starting with a letter or digit)")
    if not spec.command or not Path(spec.command[0]).is_absolute():
        raise ConfigError(f"the service's executable must be an absolute path, not {spec.command[:1]}")
    if not spec.install_dir.is_absolute():
        raise ConfigError(f"the install directory must be an absolute path, not {spec.install_dir}")
    for value in (*spec.command, str(spec.install_dir), spec.user or ""):
        if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
            raise ConfigError(f"cannot write a service file for {value!r}: it holds a control character")


# ----- systemd ----------------------------------------------------------------------------------
def _specifiers(text: str) -> str:
    """``%`` escaped: systemd expands specifiers (%h, %n ...) in most settings."""
    return text.replace("%", "%%")


def _systemd_word(arg: str, *, command: bool = False) -> str:
    """One word of a unit's command line (``command``: ``$`` escaped too, ExecStart= expands
    variables) or path list: quoted when it holds a space, a quote or a backslash (systemd.syntax(7))."""
    text = _specifiers(arg)
    if command:
        text = text.replace("$", "$$")
    if re.search(r"[\s\"'\\;]", text) or not text:
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _systemd_line(argv: Sequence[str]) -> str:
    return " ".join(_systemd_word(a, command=True) for a in argv)


def _under_home(path: Path) -> bool:
    return any(path == root or root in path.parents for root in _HOME_ROOTS)


def _interpreter(script: str) -> str | None:
    """The program a ``#!`` line names (a console script's Python), or None."""
    try:
        with open(script, "rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    return words[0] if words else None


def needed_paths(spec: ServiceSpec) -> list[Path]:
    """What the service must reach: the install dir, the executable and, for a script, its
    interpreter, each also with links resolved (a venv's python links to a base Python that may
    live in a home, e.g. pyenv's under /root)."""
    first = spec.command[0]
    programs = [first, *filter(None, [_interpreter(first)])]  # python -m ...: no #! line, first is all
    paths = [spec.install_dir]
    for program in programs:
        paths += [Path(os.path.abspath(program)), Path(os.path.realpath(program))]
    return paths


def _sandbox(spec: ServiceSpec) -> list[str]:
    """The hardening both units share. ProtectHome= hides /home, /root and /run/user unless the
    service needs something there (the install dir, a venv in a home): then it is read-only there,
    with the install dir still writable through ReadWritePaths=."""
    protect_home = "read-only" if any(_under_home(p) for p in needed_paths(spec)) else "yes"
    # PrivateTmp= gives the service an empty /tmp: an install directory in /tmp would vanish.
    in_tmp = any(Path(t) == spec.install_dir or Path(t) in spec.install_dir.parents for t in ("/tmp", "/var/tmp"))
    return [
        "UMask=0077",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={_systemd_word(str(spec.install_dir))}",
        f"ProtectHome={protect_home}",
        *([] if in_tmp else ["PrivateTmp=yes"]),
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        # AF_UNIX: the journal and D-Bus; AF_INET/6: the repository, the dashboard on 127.0.0.1,
        # health URLs. No raw, netlink or packet sockets.
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        # Not MemoryDenyWriteExecute=: ctypes (formats.lzma_dict) may need writable code pages.
        "CapabilityBoundingSet=",
    ]


def _systemd_header(spec: ServiceSpec, what: str) -> list[str]:
    return [
        f"# {what} for {spec.install_dir}",
        "# Written by `pinnacle-update service install`. Hooks (stop_command, start_command, post_swap,",
        "# health_command) run inside this sandbox: only the install directory is writable and no",
        "# privilege can be gained (no sudo). Add ReadWritePaths= for anything else they write.",
        "# start_command should hand the application to its own unit (systemctl restart app): a",
        "# process started here belongs to this unit and ends with it.",
    ]


def _systemd_service(spec: ServiceSpec, *, oneshot: bool) -> str:
    lines = _systemd_header(spec, "Unattended update check" if oneshot else "pinnacle-update agent")
    lines += [
        "[Unit]",
        _specifiers(f"Description=pinnacle-update check for {spec.install_dir}" if oneshot else
                    f"Description=pinnacle-update agent for {spec.install_dir} (dashboard on 127.0.0.1:8004)"),
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        f"Type={'oneshot' if oneshot else 'exec'}",
        f"ExecStart={_systemd_line(spec.check_argv if oneshot else spec.agent_argv)}",
        f"WorkingDirectory={_specifiers(str(spec.install_dir))}",  # the rest of the line, never unquoted
    ]
    if spec.user:
        lines.append(f"User={spec.user}")
    if not oneshot:
        lines += ["Restart=on-failure", "RestartSec=10s"]
    lines += _sandbox(spec)
    if not oneshot:
        lines += ["", "[Install]", "WantedBy=multi-user.target"]
    return "\n".join(lines) + "\n"


def _systemd_timer(spec: ServiceSpec) -> str:
    spread = max(1, min(spec.check_interval // 10, 3600))  # jitter, like the agent's loop
    return "\n".join([
        f"# Runs {spec.name}-check.service every {spec.check_interval} s (the config's check_interval).",
        "[Unit]",
        _specifiers(f"Description=pinnacle-update checks for {spec.install_dir}"),
        "",
        "[Timer]",
        "OnBootSec=5min",
        f"OnUnitActiveSec={spec.check_interval}s",
        f"RandomizedDelaySec={spread}s",
        f"Unit={spec.name}-check.service",
        "",
        "[Install]",
        "WantedBy=timers.target",
    ]) + "\n"


def systemd_files(spec: ServiceSpec) -> list[ServiceFile]:
    return [
        ServiceFile(f"{spec.name}.service", _systemd_service(spec, oneshot=False)),
        ServiceFile(f"{spec.name}-check.service", _systemd_service(spec, oneshot=True)),
        ServiceFile(f"{spec.name}-check.timer", _systemd_timer(spec)),
    ]


# ----- launchd ----------------------------------------------------------------------------------
def _label(spec: ServiceSpec, job: str) -> str:
    return f"org.pinnacle-updates.{spec.name}.{job}"


def _plist(spec: ServiceSpec, job: str) -> str:
    doc: dict[str, object] = {
        "Label": _label(spec, job),
        "ProgramArguments": spec.check_argv if job == "check" else spec.agent_argv,
        "WorkingDirectory": str(spec.install_dir),
        "StandardErrorPath": str(spec.install_dir / "logs" / f"{job}.stderr.log"),
        "ProcessType": "Background",
    }
    if job == "check":
        doc["StartInterval"] = spec.check_interval
    else:
        doc["RunAtLoad"] = True
        doc["KeepAlive"] = {"SuccessfulExit": False}  # restarted after a failure, not after a clean stop
        doc["ThrottleInterval"] = 10
    if spec.user:
        doc["UserName"] = spec.user  # honoured for a LaunchDaemon (system domain) only
    return plistlib.dumps(doc, sort_keys=False).decode("utf-8")


def launchd_files(spec: ServiceSpec) -> list[ServiceFile]:
    return [ServiceFile(f"{_label(spec, job)}.plist", _plist(spec, job)) for job in ("agent", "check")]


# ----- Windows Task Scheduler -------------------------------------------------------------------
def _minutes(seconds: int) -> str:
    return f"PT{max(1, -(-seconds // 60))}M"


def _task_xml(spec: ServiceSpec, job: str) -> str:
    ET.register_namespace("", _TASK_NS)

    def sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
        element = ET.SubElement(parent, f"{{{_TASK_NS}}}{tag}")
        if text is not None:
            element.text = text
        return element

    task = ET.Element(f"{{{_TASK_NS}}}Task", {"version": "1.2"})
    info = sub(task, "RegistrationInfo")
    sub(info, "Description", f"pinnacle-update {job} for {spec.install_dir}")
    triggers = sub(task, "Triggers")
    if job == "check":
        trigger = sub(triggers, "TimeTrigger")
        repetition = sub(trigger, "Repetition")
        sub(repetition, "Interval", _minutes(spec.check_interval))
        sub(repetition, "StopAtDurationEnd", "false")
        sub(trigger, "StartBoundary", "2026-01-01T00:00:00")
        sub(trigger, "RandomDelay", _minutes(max(60, min(spec.check_interval // 10, 3600))))
    else:
        sub(triggers, "BootTrigger")
    principal = sub(sub(task, "Principals"), "Principal", None)
    principal.set("id", "Author")
    sub(principal, "UserId", spec.user or getpass.getuser())
    sub(principal, "LogonType", "S4U")  # runs without a logged-on user, with no stored password
    sub(principal, "RunLevel", "LeastPrivilege")
    settings = sub(task, "Settings")
    sub(settings, "MultipleInstancesPolicy", "IgnoreNew")
    sub(settings, "DisallowStartIfOnBatteries", "false")
    sub(settings, "StopIfGoingOnBatteries", "false")
    sub(settings, "StartWhenAvailable", "true")
    sub(settings, "ExecutionTimeLimit", "PT0S" if job == "agent" else "PT2H")
    if job == "agent":
        restart = sub(settings, "RestartOnFailure")
        sub(restart, "Interval", "PT1M")
        sub(restart, "Count", "999")
    actions = sub(task, "Actions")
    actions.set("Context", "Author")
    exec_ = sub(actions, "Exec")
    argv = spec.check_argv if job == "check" else spec.agent_argv
    sub(exec_, "Command", argv[0])
    sub(exec_, "Arguments", subprocess.list2cmdline(argv[1:]))
    sub(exec_, "WorkingDirectory", str(spec.install_dir))
    ET.indent(task)
    body = ET.tostring(task, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-16"?>\n' + body + "\n"


def _schtasks(spec: ServiceSpec, job: str) -> str:
    return f'schtasks /Create /F /TN "pinnacle-update\\{spec.name}-{job}" /XML "%~dp0{spec.name}-{job}.xml"'


def windows_files(spec: ServiceSpec) -> list[ServiceFile]:
    files = [ServiceFile(f"{spec.name}-{job}.xml", _task_xml(spec, job), "utf-16") for job in ("agent", "check")]
    recipe = [
        "@echo off",
        f"rem Registers the pinnacle-update tasks for {spec.install_dir}; run from an elevated prompt.",
        "rem The agent (update loop and dashboard on 127.0.0.1:8004) runs from boot; for periodic checks",
        "rem with no resident agent register the second task instead (drop the 'rem' and the first line).",
        _schtasks(spec, "agent"),
        "rem " + _schtasks(spec, "check"),
    ]
    files.append(ServiceFile(f"{spec.name}-register.cmd", "\r\n".join(recipe) + "\r\n"))
    return files


# ----- all kinds --------------------------------------------------------------------------------
def files_for(kind: str, spec: ServiceSpec) -> list[ServiceFile]:
    check_spec(spec)
    if kind == "systemd":
        return systemd_files(spec)
    if kind == "launchd":
        return launchd_files(spec)
    if kind == "windows":
        return windows_files(spec)
    raise ConfigError(f"unknown service kind {kind!r} (one of {', '.join(KINDS)})")


def prepare(kind: str, spec: ServiceSpec) -> None:
    """What the files need in the install directory before their manager reads them: launchd opens
    ``StandardErrorPath`` itself and does not create its directory (the agent makes ``logs/`` only
    when it first runs)."""
    if kind == "launchd":
        try:
            (spec.install_dir / "logs").mkdir(exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {spec.install_dir / 'logs'}: {exc.strerror or exc}") from exc


def write(files: Sequence[ServiceFile], dest: Path) -> list[Path]:
    """Each file into ``dest`` (created if missing), written atomically; returns the paths."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        written = []
        for f in files:
            path = dest / f.name
            fsutil.atomic_write(path, f.text.encode(f.encoding), mode=0o644)
            written.append(path)
    except OSError as exc:
        raise ConfigError(f"cannot write the service files into {dest}: {exc.strerror or exc}") from exc
    return written


def next_steps(kind: str, spec: ServiceSpec, dest: Path) -> list[str]:
    """What the operator runs after ``write`` (one of the two jobs, not both)."""
    d = dest.resolve()
    if kind == "systemd":
        units = " ".join(str(d / f.name) for f in systemd_files(spec))
        return [
            f"sudo install -m 644 {units} /etc/systemd/system/",
            "sudo systemctl daemon-reload",
            f"sudo systemctl enable --now {spec.name}.service    # the agent: loop + dashboard on 127.0.0.1:8004",
            f"# or, with no resident agent: sudo systemctl enable --now {spec.name}-check.timer",
            f"journalctl -u {spec.name}.service -f                # its log (priorities kept: -p warning)",
        ]
    if kind == "launchd":
        agent, check = (f"{_label(spec, job)}.plist" for job in ("agent", "check"))
        return [
            f"sudo cp {d / agent} {d / check} /Library/LaunchDaemons/",
            f"sudo launchctl bootstrap system /Library/LaunchDaemons/{agent}   # the agent",
            f"# or, with no resident agent: sudo launchctl bootstrap system /Library/LaunchDaemons/{check}",
        ]
    return [f"{d / (spec.name + '-register.cmd')}    (in an elevated prompt; it registers the agent's task)"]


__all__ = ["KINDS", "ServiceFile", "ServiceSpec", "check_spec", "default_command", "default_kind", "default_name",
           "default_user", "files_for", "launchd_files", "needed_paths", "next_steps", "prepare", "systemd_files",
           "windows_files", "write"]
