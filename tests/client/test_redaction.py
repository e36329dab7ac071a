"""Credentials are never shown (issue 17, class 8a). The rule (``formats.redact``) by example and by
property; then a real install whose repository URL carries ``user:secret@`` and whose health URL
and hook command carry ``?token=...``: the install works with the real credentials (nginx ignores
them), and neither secret appears in any output (CLI status, config, history, doctor, errors; the
agent's status, health, history, check and log) nor in any text file of the install directory
other than config.toml, which must keep them."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinnacle_updates.formats.redact import redact_text, redact_url
from tests.agent_server import V1, V11, free_port, publish_all, run_agent, serve_repo
from tests.conftest import run_cli
from tests.helpers_client import Repo, app_files, init_client, publish

PASSWORD = "pw-S3cr3tPassw0rd"
TOKEN = "tok-S3cr3tT0ken"
SECRETS = (PASSWORD, TOKEN)


# ----- the rule ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "shown"), [
    ("https://user:secret@h.example:8443/repo/", "https://user:***@h.example:8443/repo/"),
    ("https://ghp_token@h.example/", "https://***@h.example/"),  # a lone user name is often a token
    ("http://u:p@[::1]:80/x", "http://u:***@[::1]:80/x"),
    ("http://h/r?token=abc&x=1", "http://h/r?token=***&x=1"),
    ("http://h/r?access_token=abc;api_key=k#id_token=z", "http://h/r?access_token=***;api_key=***#id_token=***"),
    ("https://b.s3.example/o?X-Amz-Algorithm=AWS4&X-Amz-Credential=AK%2F1&X-Amz-Signature=dead&X-Amz-Date=1",
     "https://b.s3.example/o?X-Amz-Algorithm=AWS4&X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Date=1"),
    ("https://a.blob.example/c?sv=1&sig=abc%3D", "https://a.blob.example/c?sv=1&sig=***"),
    ("http://h/plain?page=2", "http://h/plain?page=2"),
    ("file:///srv/repo", "file:///srv/repo"),
    ("/srv/repo", "/srv/repo"),
    ("http://[::1", "http://[::1"),  # malformed: never raises
])  # fmt: skip
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # idempotent


def test_redact_text_finds_urls_in_messages() -> None:
    msg = "http://u:pw@127.0.0.1:9/metadata/timestamp.json?token=t: HTTP 503 after 3 attempt(s); 'https://x:y@h/'"
    assert redact_text(msg) == ("http://u:***@127.0.0.1:9/metadata/timestamp.json?token=***: HTTP 503 after 3 "
                                "attempt(s); 'https://x:***@h/'")
    assert redact_text("no url here: token=abc") == "no url here: token=abc"


_SAFE = st.text(string.ascii_letters + string.digits + "-._~%!$'()*+,", min_size=0, max_size=20)


@settings(max_examples=300, deadline=None)
@given(user=_SAFE, host=st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True), path=_SAFE, other=_SAFE,
       name=st.sampled_from(["token", "access_token", "X-Amz-Signature", "sig", "apiKey", "password", "auth"]),
       scheme=st.sampled_from(["http", "https", "s3", "git+ssh"]), before=_SAFE, after=_SAFE)
def test_no_secret_survives(user: str, host: str, path: str, other: str, name: str, scheme: str,
                            before: str, after: str) -> None:
    """Whatever surrounds them, a URL's password and a secret parameter's value never survive, in a
    URL or in text around it; the rest of the text does."""
    url = f"{scheme}://{user}:{PASSWORD}@{host}/{path}?a={other}&{name}={TOKEN}#f"
    for shown in (redact_url(url), redact_text(f"{before} {url} {after}"), redact_text(f"'{url}': failed")):
        assert PASSWORD not in shown and TOKEN not in shown, shown
    assert redact_text(f"{before} {url} {after}").startswith(f"{before} {scheme}://")


# ----- every surface of a real install ------------------------------------------------------------
@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return publish_all(tmp_path_factory.mktemp("redact-repo"), ((V1, "patch"), (V11, "minor")))


@pytest.fixture(scope="module")
def repo_url(repo: Repo) -> Iterator[str]:
    with serve_repo(repo.dir) as url:
        yield url


def _with_credentials(url: str) -> str:
    return url.replace("http://", f"http://user:{PASSWORD}@", 1)


def _cli(d: Path, *args: str, check: bool = True) -> str:
    proc = run_cli("pinnacle-update", "--install-dir", str(d), *args, check=check)
    if check:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0 and proc.stderr.strip(), proc
    assert "Traceback" not in proc.stderr
    return proc.stdout + proc.stderr


def _assert_clean(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret} shown in {where}: {text[max(0, text.find(secret) - 200):][:400]}"


def _text_files(d: Path) -> Iterator[tuple[Path, str]]:
    for p in sorted(d.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.name != "config.toml":
            data = p.read_bytes()
            if b"\0" not in data[:8192]:
                yield p, data.decode("utf-8", "replace")


def test_credentials_are_used_but_never_shown(tmp_path: Path, repo: Repo, repo_url: str) -> None:
    d = tmp_path / "inst"
    base = _with_credentials(repo_url)
    health = f"{base}metadata/1.root.json?token={TOKEN}"  # nginx answers 200 whatever the credentials
    init_client(d, base, repo, enabled=False, health_url=health,
                health_command=f"test -f healthy # {base}?token={TOKEN}")
    outputs: dict[str, str] = {}
    outputs["install"] = _cli(d, "install", V1)
    outputs["status"] = _cli(d, "status")
    outputs["status --json"] = _cli(d, "status", "--json")
    assert json.loads(outputs["status --json"])["version"] == V1  # installed through the credentialed URL
    outputs["config show"] = _cli(d, "config", "show")
    outputs["config show --json"] = _cli(d, "config", "show", "--json")
    outputs["config set"] = _cli(d, "config", "set", "webhook_url", f"http://127.0.0.1:9/hook?token={TOKEN}")
    outputs["check"] = _cli(d, "check")
    outputs["history"] = _cli(d, "history")
    doctor = run_cli("pinnacle-update", "--install-dir", str(d), "doctor", check=False)
    outputs["doctor"] = doctor.stdout + doctor.stderr
    assert "Traceback" not in doctor.stderr

    # A failing health URL carrying the token: the update is rolled back, its reason names the URL.
    publish(repo, "1.2.0", app_files("1.2.0"))
    _cli(d, "config", "set", "health_url", f"{base}no-such-file?token={TOKEN}")
    outputs["install failing health"] = _cli(d, "install", "1.2.0", check=False)
    assert json.loads(_cli(d, "status", "--json"))["version"] == V1
    # An unreachable repository with credentials: the error names the URL.
    _cli(d, "config", "set", "repo_url", f"http://user:{PASSWORD}@127.0.0.1:{free_port()}/")
    outputs["check unreachable"] = _cli(d, "check", check=False)
    outputs["history after"] = _cli(d, "history", "--json")
    _cli(d, "config", "set", "repo_url", base)
    _cli(d, "config", "set", "health_url", health)

    with run_agent(d) as agent:
        for path in ("/api/updates/status", "/api/health", "/api/updates/history", "/api/updates/analytics",
                     "/api/updates/backups"):
            r = agent.get(path)
            assert r.status_code == 200, (path, r.text)
            outputs[path] = r.text
        assert json.loads(outputs["/api/updates/status"])["installed"]["repo_url"] == redact_url(base)
        r = agent.post("/api/updates/check")
        outputs["POST check"] = r.text
        r = agent.post("/api/updates/config", {"repo_url": f"http://user:{PASSWORD}@127.0.0.1:{free_port()}/"})
        assert r.status_code == 200, r.text
        outputs["POST config"] = r.text
        r = agent.post("/api/updates/check")
        assert r.status_code == 502, r.text
        outputs["POST check unreachable"] = r.text
        outputs["agent log"] = agent.log_text()
    outputs["agent stderr"] = agent.proc.stderr.read() if agent.proc.stderr else ""

    for where, text in outputs.items():
        _assert_clean(where, text)
    assert "user:***@" in outputs["status --json"] and "token=***" in outputs["config show"]
    assert "token=***" in outputs["install failing health"]
    assert re.search(r"user:\*\*\*@127\.0\.0\.1:\d+", outputs["check unreachable"])
    files = dict(_text_files(d))
    assert d / "history.jsonl" in files and d / "hooks.log" in files and d / "logs" / "auto_updater.log" in files
    for path, text in files.items():
        _assert_clean(str(path.relative_to(d)), text)
    assert PASSWORD in (d / "config.toml").read_text()  # the install still has what it needs


def test_history_written_before_redaction_is_shown_redacted(tmp_path: Path, repo: Repo, repo_url: str) -> None:
    """A record an older client wrote with the credential in it is redacted when read (CLI and API)."""
    d = tmp_path / "inst"
    installer = init_client(d, repo_url, repo)
    old = {"ts": "2026-01-01T00:00:00Z", "op": "check", "outcome": "failed",
           "reason": f"http://user:{PASSWORD}@h/metadata/timestamp.json?token={TOKEN}: HTTP 503"}
    (d / "history.jsonl").write_text(json.dumps(old) + "\n")
    shown = installer.history()
    assert shown[0]["reason"] == "http://user:***@h/metadata/timestamp.json?token=***: HTTP 503"
    _assert_clean("history --json", _cli(d, "history", "--json"))
