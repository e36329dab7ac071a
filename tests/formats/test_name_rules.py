"""The one name rule (``formats.archive``) on the client's side: lengths, escaping, the host's rule
family, and a malicious publisher's release with a control character in a name refused by a real
client (one line, nothing raw on the terminal, the running slot untouched)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from pinnacle_updates.client.errors import InstallError
from pinnacle_updates.formats.archive import (
    MACOS,
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    POSIX,
    WINDOWS,
    ArchiveError,
    manifest_problems,
    path_problem,
    rule_families,
    show_path,
)
from pinnacle_updates.formats.index import Digest, EntryType, Manifest, ManifestEntry
from pinnacle_updates.formats.tree import extract_release
from tests.conftest import run_cli, tree_digest
from tests.fixtures_repo import FixtureRepo, start_static_server


def _file(path: str) -> ManifestEntry:
    return ManifestEntry(path, EntryType.FILE, 0o644, size=0, sha256="0" * 64)


def test_lengths_are_bounded_on_every_platform() -> None:
    assert path_problem("a" * MAX_NAME_BYTES) is None
    assert "256 bytes" in (path_problem("a" * (MAX_NAME_BYTES + 1)) or "")
    assert "256 bytes" in (path_problem("\u00e9" * 128) or "")  # 128 characters, 256 bytes of UTF-8
    deep = "/".join(["d" * 200] * 21)
    assert len(deep.encode()) > MAX_PATH_BYTES
    assert f"more than {MAX_PATH_BYTES}" in (path_problem(deep) or "")


def test_show_path_escapes_everything_that_drives_a_terminal() -> None:
    shown = show_path("a\x1b[2J\x07\x9b\u202e\u2066\u2028b\udcff")
    assert shown == "a\\x1b[2J\\x07\\x9b\\u202e\\u2066\\u2028b\\xff"
    assert shown.isprintable()
    assert show_path("caf\u00e9/\u65e5\u672c") == "caf\u00e9/\u65e5\u672c"  # ordinary Unicode stays readable


def test_host_family_and_platform_tags() -> None:
    host = {"win32": WINDOWS, "darwin": MACOS}.get(sys.platform, POSIX)
    assert rule_families(None) == {POSIX, host}
    assert rule_families("any") == {POSIX, MACOS, WINDOWS}
    assert rule_families("windows-arm64") == {POSIX, WINDOWS}
    assert rule_families("macos-x86_64") == {POSIX, MACOS}
    assert rule_families("freebsd-amd64") == {POSIX}
    # a case collision is one file on Windows and macOS, two on Linux: the client checks its own host
    entries = [_file("A"), _file("a")]
    assert manifest_problems(entries, "linux-x86_64") == []
    assert manifest_problems(entries, "windows-x86_64") and manifest_problems(entries, "macos-arm64")
    assert bool(manifest_problems(entries)) == (host != POSIX)


def test_extraction_refuses_a_manifest_with_a_control_character(tmp_path: Path) -> None:
    manifest = Manifest("1.0", Digest(0, "0" * 64), (_file("\x1b]0;x\x07"),))
    (tmp_path / "slot").mkdir()
    with pytest.raises(ArchiveError) as caught:
        extract_release(tmp_path / "none.tar.zst", tmp_path / "slot", manifest)
    assert "\\x1b]0;x\\x07" in str(caught.value) and "\x1b" not in str(caught.value)


@pytest.mark.parametrize("name", ["\x1b[2J\x1b[31mevil", "readme\u202etxt.exe"])
def test_client_refuses_a_signed_release_with_an_unsafe_name(name: str, tmp_path: Path) -> None:
    """A publisher that skips the rules (or is malicious): the release is validly signed, and the
    client still refuses to write it, before the swap."""
    repo = FixtureRepo(tmp_path / "repo")
    repo.publish("stable", "1.0.0", files={"app": b"v1\n"})
    served = start_static_server(repo.path)
    install = tmp_path / "install"
    try:
        def client(*args: str, check: bool = True):  # type: ignore[no-untyped-def]
            return run_cli("pinnacle-update", "--install-dir", str(install), *args, check=check)

        client("init", "--repo", served.url, "--root", str(repo.metadata_dir / "1.root.json"),
               "--platform", "linux-x86_64")
        client("install", "1.0.0")
        running = (install / "current").resolve()
        before = tree_digest(running)
        repo.publish("stable", "1.1.0", files={"app": b"v2\n", name: zstandard.compress(b"x")})
        proc = client("install", check=False)
    finally:
        served.stop()
    assert proc.returncode == InstallError.exit_code, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "\x1b" not in proc.stderr and "\u202e" not in proc.stderr
    assert show_path(name) in lines[0], lines[0]
    assert (install / "current").resolve() == running and tree_digest(running) == before


_NAME_CHARS = st.one_of(
    st.sampled_from("aA\u00e9e\u0301._- :?<>*|\"\\/\x00\x1b\x7f\x9b\u202e\u2066\u200f\u2028\u00df\u0130\u00b9"),
    st.characters(codec="utf-8"),
    st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),  # surrogate escapes of undecodable bytes
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(_NAME_CHARS, min_size=1, max_size=12), min_size=1, max_size=6, unique=True))
def test_names_property_any_is_the_union_and_nothing_raises(names: list[str]) -> None:
    """For any names: the rules answer (never raise), what is shown is never a raw control, bidi or
    undecodable character, and what ``any`` accepts every platform accepts."""
    entries = [_file(n) for n in sorted(names, key=lambda n: n.encode("utf-8", "surrogatepass"))]
    verdicts = {p: manifest_problems(entries, p) for p in ("any", "linux-x86_64", "macos-arm64", "windows-x86_64")}
    verdicts["host"] = manifest_problems(entries)
    for problems in verdicts.values():
        for text in problems:
            assert text.encode("utf-8") and not any(c in text for c in "\x1b\x7f\x9b\u202e\u2066\u200f\u2028")
    if not verdicts["any"]:
        assert not any(verdicts.values()), verdicts
    for name in names:
        shown = show_path(name)
        assert shown.encode("utf-8") and "\x1b" not in shown and "\u202e" not in shown
