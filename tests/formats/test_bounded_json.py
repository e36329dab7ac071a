"""formats.boundedjson: every decoding failure of every document pinnacle reads is one FormatError,
and formats.fsutil.read_regular: a local file that is not a regular file is refused at once."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinnacle_updates.formats import boundedjson, fsutil
from pinnacle_updates.formats.boundedjson import FormatError, load_object, loads
from pinnacle_updates.formats.index import FormatError as IndexFormatError
from pinnacle_updates.formats.index import Manifest
from pinnacle_updates.repo_tools.errors import KeyStoreError, RepositoryStateError
from tests.conftest import run_cli


@pytest.mark.parametrize(
    "data, message",
    [
        (b"[" * 65 + b"]" * 65, "nested deeper than 64"),
        (b"[" * 200_000, "nested deeper than 64"),  # json.loads: RecursionError
        (b'{"a":' + b"[" * 100 + b"]" * 100 + b"}", "nested deeper"),
        (b'{"s":"' + b"]" * 100 + b'","d":' + b"[" * 70 + b"]" * 70 + b"}", "nested deeper"),  # closers in a string
        (b'{"n":' + b"9" * 41 + b"}", "at most 40 digits"),
        (b'{"n":' + b"9" * 5000 + b"}", "at most 40 digits"),  # json.loads: ValueError past JSONDecodeError
        (b'{"n":1e999}', "out of range"),
        (b'{"n":-1e400}', "out of range"),
        (b'{"n":1.' + b"0" * 80 + b"}", "a number of"),
        (b'{"n":NaN}', "NaN is not a JSON number"),
        (b'{"n":-Infinity}', "-Infinity is not a JSON number"),
        (b'{"a":1,"a":2}', "'a' appears twice"),
        (b'{"s":"\\ud800"}', "unpaired surrogate"),
        (b'{"s":"\\udc00x"}', "unpaired surrogate"),
        (b'{"s":"\\ud800\\u0041"}', "unpaired surrogate"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"s":"\xc3"}', "not UTF-8"),
        (b"", "not valid JSON"),
        (b'{"a":1', "not valid JSON"),
        (b'{"a":1}\x00', "not valid JSON"),
        (b'{"s":"a\x00b"}', "not valid JSON"),  # a raw control character inside a string
        (b"\xef\xbb\xbf{}", "not valid JSON"),  # a BOM
    ],
)
def test_every_decoding_failure_is_a_format_error(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message) as info:
        loads(data, "doc")
    assert str(info.value).startswith("doc: ")
    assert "\n" not in str(info.value)


def test_format_error_is_the_one_of_the_formats() -> None:
    assert FormatError is IndexFormatError
    assert issubclass(FormatError, ValueError)


@pytest.mark.parametrize(
    "data, value",
    [
        (b"[" * 64 + b"]" * 64, None),
        (b'{"s":"' + b"[" * 80 + b'"}', {"s": "[" * 80}),
        (b'{"s":"\\"' + b"[" * 80 + b'"}', {"s": '"' + "[" * 80}),  # brackets after an escaped quote
        (b'{"s":"\\\\ud800"}', {"s": "\\ud800"}),  # an escaped backslash, not a surrogate escape
        (b'{"s":"\\ud83d\\ude00"}', {"s": "\U0001f600"}),  # a surrogate pair is one character
        (b'{"n":' + b"9" * 40 + b"}", {"n": int("9" * 40)}),
        (b'{"n":-' + b"9" * 40 + b"}", {"n": -int("9" * 40)}),
        (b'{"f":1.5e300}', {"f": 1.5e300}),
    ],
)
def test_what_is_within_the_bounds_decodes_as_json_does(data: bytes, value: object) -> None:
    got = loads(data, "doc")
    assert got == (json.loads(data) if value is None else value)


def test_the_size_bound_is_the_callers() -> None:
    with pytest.raises(FormatError, match="101 bytes, more than the 100-byte limit"):
        loads(b" " * 100 + b"1", "doc", max_bytes=100)
    with pytest.raises(FormatError, match="expected a JSON object, not an array"):
        load_object(b"[]", "doc")


def test_a_large_manifest_decodes_in_bounded_time() -> None:
    """The bounds cost little over json.loads on the largest real document, a manifest."""
    entries = [{"path": f"dir/file{i}.txt", "sha256": "a" * 64, "size": i, "mode": 420, "type": "file"}
               for i in range(20_000)]
    data = json.dumps({"format": 1, "version": "1.0", "content": {"sha256": "0" * 64, "size": 1},
                       "entries": entries}).encode()
    start = time.perf_counter()
    plain = json.loads(data)
    plain_time = time.perf_counter() - start
    start = time.perf_counter()
    assert loads(data, "manifest") == plain
    assert time.perf_counter() - start < 5 * plain_time + 0.2


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json_values)
def test_anything_json_writes_within_the_bounds_reads_back(value: object) -> None:
    data = json.dumps(value, ensure_ascii=False).encode("utf-8")
    try:
        got = loads(data, "doc")
    except FormatError as exc:  # only for what the bounds refuse
        assert "digits" in str(exc) or "nested" in str(exc), exc
        return
    assert got == value


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200) | st.text(alphabet='[]{}",:0123456789.eE+-\\nutrfals \x00', max_size=200))
def test_any_bytes_give_a_value_or_a_format_error(data: bytes | str) -> None:
    with contextlib.suppress(FormatError):
        loads(data, "doc")


def test_manifest_with_a_deeply_nested_entry_is_a_format_error() -> None:
    bomb = b'{"format":1,"version":"1","content":' + b"[" * 5000 + b"]" * 5000 + b',"entries":[]}'
    with pytest.raises(FormatError, match="manifest: nested deeper"):
        Manifest.from_bytes(bomb)


# -- read_regular ----------------------------------------------------------------------------------
def _read_with_timeout(path: Path, limit: int = 100) -> bytes | BaseException:
    """read_regular in a thread: a blocking open of a FIFO would hang the test, not fail it."""
    out: list[bytes | BaseException] = []

    def run() -> None:
        try:
            out.append(fsutil.read_regular(path, limit))
        except BaseException as exc:  # handed to the test
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    assert out, f"read_regular({path}) blocked"
    return out[0]


def test_read_regular_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    (tmp_path / "real").write_bytes(b"x")
    link.symlink_to(tmp_path / "real")
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        for path, kind in ((fifo, "a FIFO"), (link, "a symbolic link"), (tmp_path, "a directory"),
                           (sock_path, "a socket"), (Path("/dev/null"), "a device")):
            got = _read_with_timeout(path)
            assert isinstance(got, fsutil.NotRegularFile), (path, got)
            assert got.strerror == f"{kind}, not a regular file"
    finally:
        sock.close()
    assert fsutil.read_regular(link, 10, follow=True) == b"x"


def test_read_regular_reads_no_more_than_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 101)
    got = _read_with_timeout(path, 100)
    assert isinstance(got, OSError) and got.strerror == "larger than 100 bytes"
    assert fsutil.read_regular(path, 101) == b"x" * 101


def test_a_fifo_at_a_lock_path_is_refused_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "lock")
    with pytest.raises(fsutil.NotRegularFile, match="a FIFO"), fsutil.exclusive_lock(tmp_path / "lock"):
        pass


def test_bounds_are_named_once() -> None:
    assert boundedjson.MAX_DEPTH == 64 and boundedjson.MAX_INT_DIGITS == 40


# -- the publisher's own files: the same reader, one line each -----------------------------------------
@pytest.fixture(scope="module")
def publisher_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("publisher-files")
    run_cli("pinnacle-release", "keys", "init", str(base / "keys"), "--insecure-plaintext")
    run_cli("pinnacle-release", "init", str(base / "repo"), "--keys", str(base / "keys"))
    return base / "repo", base / "keys"


def _plant(path: Path, what: str) -> None:
    path.unlink()
    if what == "fifo":
        os.mkfifo(path, 0o600)
    else:
        path.write_bytes({"deep": b"[" * 100_000 + b"]" * 100_000, "huge int": b'{"format":' + b"9" * 5000 + b"}",
                          "dup": b'{"format":1,"format":1}'}[what])


@pytest.mark.parametrize("what", ["fifo", "deep", "huge int", "dup"])
@pytest.mark.parametrize(("planted", "command", "code"), [
    ("keys/keys.json", "publish", KeyStoreError.exit_code),
    ("repo/pinnacle-repo.json", "publish", RepositoryStateError.exit_code),
    ("repo/metadata/1.root.json", "status", RepositoryStateError.exit_code),
])
def test_a_damaged_publisher_file_is_one_line(publisher_repo: tuple[Path, Path], tmp_path: Path, what: str,
                                             planted: str, command: str, code: int) -> None:
    repo, keys = tmp_path / "repo", tmp_path / "keys"
    shutil.copytree(publisher_repo[0], repo)
    shutil.copytree(publisher_repo[1], keys)
    _plant(tmp_path / planted, what)
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "app").write_text("#!/bin/sh\n")
    args = {"publish": ["publish", str(repo), str(src), "--keys", str(keys), "--channel", "stable", "--version",
                        "1.0.0", "--type", "patch", "--platform", "any"],
            "status": ["status", str(repo)]}[command]
    proc = run_cli("pinnacle-release", *args, check=False)  # a blocking open would hang until the timeout
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
