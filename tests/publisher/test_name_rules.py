"""File-name rules per target platform (issue 17, class 6): ``publish`` refuses a tree whose names are
unsafe on the platform it is published for, with ``--platform any`` meaning safe everywhere; the
refusal is one line naming the path (escaped, never a raw control character) and the rule, UnsafeInputError,
and the repository is left exactly as it was."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest

from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.errors import UnsafeInputError
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests.conftest import run_cli, tree_digest, write_tree

NFC = unicodedata.normalize("NFC", "caf\u00e9")
NFD = unicodedata.normalize("NFD", NFC)

# name(s) added to a valid tree -> the platforms that must refuse them (the others accept them)
CASES: dict[str, tuple[tuple[str, ...], frozenset[str], str]] = {
    "esc": (("bin/\x1b[2Jx",), frozenset({"linux", "macos", "windows", "any"}), "U+001B"),
    "del": (("a\x7fb",), frozenset({"linux", "macos", "windows", "any"}), "U+007F"),
    "c1": (("a\x9bb",), frozenset({"linux", "macos", "windows", "any"}), "U+009B"),
    "bidi override": (("doc\u202etxt.exe",), frozenset({"linux", "macos", "windows", "any"}), "U+202E"),
    "bidi isolate": (("doc\u2067x",), frozenset({"linux", "macos", "windows", "any"}), "U+2067"),
    "rtl mark": (("doc\u200fx",), frozenset({"linux", "macos", "windows", "any"}), "U+200F"),
    "line separator": (("a\u2028b",), frozenset({"linux", "macos", "windows", "any"}), "U+2028"),
    "case": (("README", "readme"), frozenset({"macos", "windows", "any"}), "case folding"),
    "normalisation": ((NFC, NFD), frozenset({"macos", "any"}), "normalisation"),
    "reserved": (("lib/con.txt",), frozenset({"windows", "any"}), "reserved device name"),
    "reserved com": (("COM1",), frozenset({"windows", "any"}), "reserved device name"),
    "reserved lpt ext": (("Lpt9.tar.gz",), frozenset({"windows", "any"}), "reserved device name"),
    "colon": (("a:b",), frozenset({"windows", "any"}), "Windows forbids"),
    "question": (("what?",), frozenset({"windows", "any"}), "Windows forbids"),
    "trailing dot": (("name.",), frozenset({"windows", "any"}), "dot or a space"),
    "trailing space": (("name ",), frozenset({"windows", "any"}), "dot or a space"),
    "windows length": (("/".join(["d" * 90] * 3),), frozenset({"windows", "any"}), "more than Windows' 260"),
}
PLATFORMS = {"linux": "linux-x86_64", "macos": "macos-arm64", "windows": "windows-x86_64", "any": "any"}


def _tree(root: Path, names: tuple[str, ...]) -> Path:
    write_tree(root, {"bin/app": "#!/bin/sh\necho hi\n"})
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return root


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_platform_refuses_exactly_its_unsafe_names(case: str, repo: Repository, keystore: KeyStore,
                                                         tmp_path: Path) -> None:
    names, refused_on, rule = CASES[case]
    src = _tree(tmp_path / "src", names)
    before = tree_digest(repo.path)
    for n, (family, tag) in enumerate(sorted(PLATFORMS.items())):
        request = ops.PublishRequest("stable", f"1.0.{n}", "patch", tag, src, deltas=0)
        if family not in refused_on:
            ops.publish(repo, keystore, request)
            continue
        with pytest.raises(UnsafeInputError) as caught:
            ops.publish(repo, keystore, request)
        message = str(caught.value)
        assert rule in message, message
        assert message.isprintable() and "\u202e" not in message, repr(message)
        if refused_on < set(PLATFORMS):  # a platform's own rule says which platform it is for
            assert f"platform {tag}" in message, message
    if refused_on >= set(PLATFORMS):
        assert tree_digest(repo.path) == before  # refused everywhere: nothing was written


def test_refusal_through_the_cli_is_one_escaped_line_exit_3(repo: Repository, keys_dir: Path, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", ("bin/\x1b]0;pwned\x07title", "CON"))
    before = tree_digest(repo.path)
    for platform, shown in (("linux-x86_64", "bin/\\x1b]0;pwned\\x07title"), ("any", "bin/\\x1b]0;pwned\\x07title")):
        proc = run_cli("pinnacle-release", "publish", str(repo.path), "--keys", str(keys_dir), "--channel", "stable",
                       "--version", "1.0", "--type", "patch", "--platform", platform, str(src), check=False)
        assert proc.returncode == UnsafeInputError.exit_code, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
        assert shown in lines[0] and "U+001B" in lines[0], lines[0]
    (src / "bin" / "\x1b]0;pwned\x07title").unlink()
    proc = run_cli("pinnacle-release", "publish", str(repo.path), "--keys", str(keys_dir), "--channel", "stable",
                   "--version", "1.0", "--type", "patch", "--platform", "any", str(src), check=False)
    assert proc.returncode == UnsafeInputError.exit_code, proc.stderr
    assert "CON" in proc.stderr and "reserved device name on Windows" in proc.stderr
    assert tree_digest(repo.path) == before
    run_cli("pinnacle-release", "publish", str(repo.path), "--keys", str(keys_dir), "--channel", "stable",
            "--version", "1.0", "--type", "patch", "--platform", "linux-x86_64", str(src))


def test_symlink_target_with_a_control_character_is_refused(repo: Repository, keystore: KeyStore,
                                                             tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", ("a\x1bb",))
    os.rename(src / "a\x1bb", src / "data")
    os.symlink("a\x1bb", src / "link")  # dangling, inside the tree: only the name is wrong
    with pytest.raises(UnsafeInputError, match=r"symlink target 'a\\\\x1bb'"):
        ops.publish(repo, keystore, ops.PublishRequest("stable", "1.0", "patch", "linux-x86_64", src, deltas=0))
