"""Damaged local files and hostile signed JSON (issue 17, classes 3 and 8b): every decoding failure
is one line of an ``UpdateError`` subclass, ``status`` and ``recover`` keep working, the running
slot is untouched, a planted FIFO never hangs a command, and a delta whose signed header is a
JSON bomb makes the install fall back to the full artifact.

The property tests mutate the real files of a real installation (structured: deep nesting, huge
numbers, wrong types, truncation, NULs, invalid UTF-8, duplicate keys) and call ``status`` and
``recover`` through the public API, a sample of them through the real CLI process."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pyzstd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinnacle_updates.client import AutoUpdater, errors
from pinnacle_updates.client.errors import ConfigError, RepositoryError, StateError, TrustError, UpdateError
from pinnacle_updates.client.installer import Installer
from pinnacle_updates.formats import delta_format
from pinnacle_updates.formats.boundedjson import FormatError
from pinnacle_updates.formats.delta_format import DeltaFormatError, DeltaHeader, read_header
from pinnacle_updates.formats.index import ChannelIndex, Manifest
from tests.agent_server import run_agent
from tests.client.test_delta_client import CHAIN, delta_file, forge_delta, index_of, publish_with
from tests.helpers_client import PY, ROOT, Repo, env, init_client, make_repo, serve, tree_digest

EXIT_CODES = {e.exit_code for e in vars(errors).values() if isinstance(e, type) and issubclass(e, UpdateError)}
"""The documented exit codes of the client's error classes."""


# -- a real installation: 1.0.0 from a published repository with a delta to 1.1.0 ---------------------
@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    repo = make_repo(tmp_path_factory.mktemp("damaged-pub"))
    for i, v in enumerate(CHAIN[:2]):
        publish_with(repo, v, i, deltas=1)
    return repo


@pytest.fixture(scope="module")
def pristine(published: Repo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("damaged-install") / "install"
    init_client(d, str(published.dir), published).install("1.0.0")
    Installer(d).check()  # fleet.json written, history has records
    assert (d / "fleet.json").exists()
    return d


def own_copy(published: Repo, tmp_path: Path) -> Repo:
    """A copy of the published repository this test may forge in (same keys)."""
    shutil.copytree(published.dir, tmp_path / "repo")
    return Repo(tmp_path / "repo", published.keys)


class Copies:
    """Fresh copies of the pristine installation (a hypothesis example may not share a fixture's)."""

    def __init__(self, pristine: Path, base: Path) -> None:
        self.pristine, self.base, self.n = pristine, base, 0
        self.slot_a = tree_digest(pristine / "slots" / "a")

    def __call__(self) -> Path:
        self.n += 1
        d = self.base / f"copy{self.n}"
        shutil.copytree(self.pristine, d, symlinks=True)
        return d


@pytest.fixture(scope="module")
def copies(pristine: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Copies]:
    base = tmp_path_factory.mktemp("damaged-copies")
    yield Copies(pristine, base)
    shutil.rmtree(base, ignore_errors=True)


def client_cli(d: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "pinnacle_updates.client", "--install-dir", str(d), *args], cwd=ROOT,
                          env=env(), capture_output=True, text=True, check=False, timeout=timeout)


def one_line_or_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode != 0:
        assert proc.returncode in EXIT_CODES, (proc.returncode, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def running_slot_untouched(d: Path, copies: Copies) -> None:
    assert os.readlink(d / "current") == "slots/a"
    assert tree_digest(d / "slots" / "a") == copies.slot_a


# -- structured mutations of JSON documents ------------------------------------------------------------
BOMBS: dict[str, Callable[[], Any]] = {
    "deep": lambda: json.loads("[" * 60 + "]" * 60),  # within the bound: the outer document crosses it
    "huge int": lambda: 10 ** 400,
    "wrong type list": lambda: [1, "x"],
    "wrong type object": lambda: {"x": 1},
    "wrong type number": lambda: -7,
    "wrong type bool": lambda: True,
    "null": lambda: None,
    "string": lambda: "\u202e../../etc",
}


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = _replaced(doc[path[0]], path[1:], value)  # type: ignore[index]
    return copy


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` (a JSON document) with one structured mutation."""
    how = draw(st.sampled_from(["value", "value", "deep", "int digits", "truncate", "nul", "utf8", "dup key",
                                "float", "surrogate"]))
    if how in ("value", "deep", "int digits", "float"):
        doc = json.loads(data)
        path = draw(st.sampled_from(_paths(doc)))
        if how == "value":
            value = BOMBS[draw(st.sampled_from(sorted(BOMBS)))]()
            return json.dumps(_replaced(doc, path, value)).encode()
        text = {"deep": "[" * 5000 + "]" * 5000, "int digits": "9" * draw(st.integers(41, 6000)),
                "float": draw(st.sampled_from(["1e999", "-1e999", "NaN", "Infinity", "1." + "0" * 90]))}[how]
        marker = "\x00MARK\x00"
        return json.dumps(_replaced(doc, path, marker)).replace(json.dumps(marker), text).encode()
    cut = draw(st.integers(0, max(0, len(data) - 1)))
    if how == "truncate":
        return data[:cut]
    if how == "nul":
        return data[:cut] + b"\x00" + data[cut:]
    if how == "utf8":
        return data[:cut] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])) + data[cut:]
    if how == "surrogate":
        return data.replace(b'"', b'"\\ud800', 1) if b'"' in data else data + b'"\\udc00"'
    return data.replace(b"{", b'{"dup":1,"dup":2,', 1) if b"{" in data else data  # dup key


def _manifest_file(d: Path) -> Path:
    return next((d / "manifests").iterdir())


LOCAL_FILES: dict[str, Callable[[Path], Path]] = {
    "state.json": lambda d: d / "state.json",
    "fleet.json": lambda d: d / "fleet.json",
    "manifest": _manifest_file,
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_local_files_never_crash_status_or_recover(copies: Copies, data: st.DataObject) -> None:
    d = copies()
    names = data.draw(st.sets(st.sampled_from([*LOCAL_FILES, "history.jsonl"]), min_size=1, max_size=2))
    for name in sorted(names):
        if name == "history.jsonl":
            lines = (d / name).read_bytes().splitlines()
            i = data.draw(st.integers(0, len(lines) - 1))
            lines[i] = data.draw(mutated(lines[i]))
            (d / name).write_bytes(b"\n".join(lines) + b"\n")
        else:
            path = LOCAL_FILES[name](d)
            path.write_bytes(data.draw(mutated(path.read_bytes())))
    updater = AutoUpdater(d)
    for call in (updater.status, updater.history, updater.recover, updater.status):
        try:
            call()
        except UpdateError as exc:
            assert "\n" not in str(exc) and str(exc), exc
    running_slot_untouched(d, copies)
    # whatever was damaged, recover leaves state.json readable unless it could not identify the slot
    try:
        assert updater.status()["version"] == "1.0.0"
    except UpdateError as exc:
        assert ("manifest" in names and "cannot rebuild" in str(exc)) or "state file" in str(exc), exc
    shutil.rmtree(d)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_local_files_through_the_real_cli(copies: Copies, data: st.DataObject) -> None:
    d = copies()
    name = data.draw(st.sampled_from(["state.json", "fleet.json"]))
    path = d / name
    path.write_bytes(data.draw(mutated(path.read_bytes())))
    for command in ("status", "recover"):
        one_line_or_ok(client_cli(d, command))
    running_slot_untouched(d, copies)
    shutil.rmtree(d)


@pytest.mark.parametrize("bomb", [b"[" * 100_000 + b"]" * 100_000, b'{"schema":1,"x":' + b"9" * 5000 + b"}",
                                  b'{"schema":1,"state":"idle","state":"committed"}', b'{"schema":NaN}'])
def test_a_state_file_bomb_is_one_line_and_recover_rebuilds_it(copies: Copies, bomb: bytes) -> None:
    d = copies()
    (d / "state.json").write_bytes(bomb)
    proc = client_cli(d, "status")
    assert proc.returncode == StateError.exit_code, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "state file" in proc.stderr and "recover" in proc.stderr
    proc = client_cli(d, "recover")
    assert proc.returncode == 0, proc.stderr
    assert "rebuilt from the slots" in proc.stdout
    assert (d / "state.json.corrupt").read_bytes() == bomb
    assert AutoUpdater(d).status()["version"] == "1.0.0"
    running_slot_untouched(d, copies)


def test_history_and_fleet_bombs_leave_status_and_history_working(copies: Copies) -> None:
    d = copies()
    good = (d / "history.jsonl").read_bytes()
    with (d / "history.jsonl").open("ab") as f:
        f.write(b"[" * 100_000 + b"\n" + b'{"op":' + b"9" * 5000 + b"}\n" + b'{"op":"x","op":"y"}\n' + b"\xff\n")
    (d / "fleet.json").write_bytes(b'{"groups":' + b"[" * 100_000 + b"}")
    updater = AutoUpdater(d)
    assert updater.status()["version"] == "1.0.0"
    assert updater.history() == [json.loads(line) for line in good.splitlines()]
    one_line_or_ok(proc := client_cli(d, "status"))
    assert proc.returncode == 0
    one_line_or_ok(proc := client_cli(d, "history"))
    assert proc.returncode == 0


# -- planted FIFOs (class 8b) ------------------------------------------------------------------------
FIFO_CASES = [
    ("state.json", "status", StateError.exit_code), ("state.json", "recover", 0),
    ("history.jsonl", "history", StateError.exit_code), ("fleet.json", "status", 0), ("config.toml", "status", 0),
    ("config.toml", "check", ConfigError.exit_code), ("lock", "rollback", StateError.exit_code),
    ("lock", "verify", 0), ("manifest", "verify", 0), ("agent.token", "token", ConfigError.exit_code),
]


@pytest.mark.parametrize(("planted", "command", "code"), FIFO_CASES)
def test_a_fifo_planted_at_a_local_file_never_hangs(copies: Copies, planted: str, command: str, code: int) -> None:
    d = copies()
    if planted == "agent.token":
        (d / planted).touch(0o600)
    path = _manifest_file(d) if planted == "manifest" else d / planted
    path.unlink()
    os.mkfifo(path, 0o600)
    proc = client_cli(d, command, timeout=30)  # a blocking open would hang here until the timeout
    one_line_or_ok(proc)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    if code:
        assert "FIFO" in proc.stderr, proc.stderr
    running_slot_untouched(d, copies)


# -- signed JSON: delta headers, manifests, channel indexes --------------------------------------------
def _header_bytes(data: bytes) -> tuple[bytes, int]:
    """The JSON of a delta's stored header, and where its payload starts."""
    header = read_header(io.BytesIO(data))
    frame = data[delta_format.PREFIX_LENGTH:header.payload_start]
    return pyzstd.decompress(frame), header.payload_start


def _with_header(data: bytes, text: bytes) -> bytes:
    _, start = _header_bytes(data)
    frame = pyzstd.compress(text)
    return delta_format.MAGIC + delta_format._LENGTH.pack(len(frame)) + frame + data[start:]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_signed_json_is_only_ever_a_format_error(pristine: Path, published: Repo,
                                                         data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["delta header", "manifest", "channel index"]))
    if kind == "delta header":
        delta = delta_file(published, "1.1.0", "1.0.0").read_bytes()
        text, _ = _header_bytes(delta)
        with _maybe(DeltaFormatError):
            DeltaHeader.from_bytes(pyzstd.compress(data.draw(mutated(text))))
    elif kind == "manifest":
        with _maybe(FormatError):
            Manifest.from_bytes(data.draw(mutated(_manifest_file(pristine).read_bytes())))
    else:
        with _maybe(FormatError):
            ChannelIndex.from_bytes(data.draw(mutated(index_of(published).to_bytes())))


class _maybe:
    """Like ``pytest.raises`` but the block may also succeed (a mutation can leave a valid document);
    any other exception fails the test, and the error is one line."""

    def __init__(self, kind: type[Exception]) -> None:
        self.kind = kind

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            return False
        assert isinstance(exc, self.kind), repr(exc)
        assert "\n" not in str(exc)
        return True


@pytest.mark.parametrize("bomb", [
    b'{"format":3,"from":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"format":3,"from":"1.0.0","to":"1.1.0","from_content":{"size":' + b"9" * 5000 + b"}}",
    b'{"format":3,"format":3}',
])
def test_a_signed_delta_header_bomb_falls_back_to_the_full_artifact(published: Repo, tmp_path: Path,
                                                                     bomb: bytes) -> None:
    repo = own_copy(published, tmp_path)
    d = tmp_path / "inst"
    installer = init_client(d, str(repo.dir), repo)
    installer.install("1.0.0")
    before = tree_digest(d / "slots" / "a")
    forge_delta(repo, "1.1.0", "1.0.0", lambda data: _with_header(data, bomb))
    assert Installer(d).check("1.1.0").path == "delta:1.0.0->1.1.0"  # signed and listed: the client tries it
    result = Installer(d).install("1.1.0")
    assert result.version == "1.1.0"
    record = Installer(d).history()[-1]
    assert record["path"] == "full", record
    assert "delta header" in record["fallback_reason"], record["fallback_reason"]
    assert tree_digest(d / "slots" / "a") == before  # the previous slot, now the rollback target, untouched
    assert Installer(d).verify(all_slots=True).ok


# -- TUF metadata: python-tuf parses it; a JSON bomb served as timestamp.json is one line -------------
def test_a_deeply_nested_timestamp_served_by_the_repository_is_one_line(published: Repo, tmp_path: Path) -> None:
    repo = own_copy(published, tmp_path)
    repo_dir = repo.dir
    d = tmp_path / "inst"
    with serve(repo_dir) as url:
        init_client(d, url, repo).install("1.0.0")
        before = tree_digest(d / "slots" / "a")
        depth = 7000  # within ngclient's 16 KiB bound for timestamp.json
        bomb = (b'{"signatures":[],"signed":{"_type":"timestamp","x":' + b"[" * depth + b"]" * depth + b"}}")
        (repo_dir / "metadata" / "timestamp.json").write_bytes(bomb)
        with pytest.raises((TrustError, UpdateError)) as info:
            Installer(d).check()
        assert "\n" not in str(info.value)
        proc = client_cli(d, "check")
        one_line_or_ok(proc)
        assert proc.returncode in (RepositoryError.exit_code, TrustError.exit_code), proc.stderr
    assert tree_digest(d / "slots" / "a") == before
    assert AutoUpdater(d).status()["version"] == "1.0.0"


# -- the agent reads JSON request bodies through the same reader ---------------------------------------
@pytest.mark.parametrize("body", [b"[" * 30_000 + b"]" * 30_000, b'{"check_interval":' + b"9" * 5000 + b"}",
                                  b'{"channel":"beta","channel":"stable"}', b'{"health_timeout":NaN}'])
def test_an_agent_request_body_bomb_is_a_422(copies: Copies, body: bytes) -> None:
    d = copies()
    config_before = (d / "config.toml").read_bytes()
    with run_agent(d) as agent:
        r = agent.http.post("/api/updates/config", content=body,
                            headers={**agent.auth(), "Content-Type": "application/json"})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_request"
        assert agent.get("/api/health").status_code == 200
    assert (d / "config.toml").read_bytes() == config_before
    running_slot_untouched(d, copies)
