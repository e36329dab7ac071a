"""This machine's platform tag (``linux-x86_64``, ``macos-arm64``, ``windows-x86_64``, ...).

Releases are published per platform tag; the tag must be spelled the same way on every machine
whatever the OS calls it (``AMD64`` on Windows, ``aarch64`` on Linux, ``arm64`` on macOS).
"""

from __future__ import annotations

import platform as _platform
import re

from pinnacle_updates.formats.index import check_platform

_SYSTEMS = {"linux": "linux", "darwin": "macos", "windows": "windows", "freebsd": "freebsd"}
_MACHINES = {
    "x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64", "em64t": "x86_64",
    "aarch64": "arm64", "arm64": "arm64", "aarch64_be": "arm64",
    "i386": "x86", "i486": "x86", "i586": "x86", "i686": "x86", "x86": "x86",
    "armv7l": "armv7", "armv7": "armv7", "armv6l": "armv6",
    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
}  # fmt: skip


def platform_tag(system: str, machine: str) -> str:
    """Normalise an OS name and machine name (as ``platform.system()``/``machine()`` report them)."""
    sys_key = system.strip().lower()
    os_tag = _SYSTEMS.get(sys_key) or re.sub(r"[^a-z0-9]", "", sys_key) or "unknown"
    mach_key = machine.strip().lower()
    arch = _MACHINES.get(mach_key) or re.sub(r"[^a-z0-9_]", "_", mach_key) or "unknown"
    return check_platform(f"{os_tag}-{arch}")


def detect_platform() -> str:
    """The tag of the machine this runs on."""
    return platform_tag(_platform.system(), _platform.machine())
