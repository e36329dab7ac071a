"""Private repositories (client.repo_access over client.transport): nginx on 127.0.0.1 asking for HTTP
basic auth, a bearer token, or a client certificate (``ssl_verify_client on``). The right credentials
install; missing or wrong ones fail with RepositoryError's exit code in one line that names the
repository, and nothing in the install directory changes; no credential shows up anywhere."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pinnacle_updates.client import config
from pinnacle_updates.client.errors import ConfigError, RepositoryError
from pinnacle_updates.client.repo_access import load
from pinnacle_updates.client.transport import HttpxFetcher
from tests.agent_server import run_agent
from tests.conftest import run_cli
from tests.helpers_client import Repo, app_files, make_repo, publish
from tests.nginx_server import NginxServer, find_nginx

pytestmark = pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed")

USER, PASSWORD = "alice", "pw-Secret-7f3e9a1c"
TOKEN = "tok-Secret-0b8d2e6f4a"
HEADER_SECRET = "hdr-Secret-55aa11cc"
SECRETS = (PASSWORD, TOKEN, HEADER_SECRET, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    repo = make_repo(tmp_path_factory.mktemp("private"))
    publish(repo, "1.0.0", app_files("1.0.0"))
    return repo


# ----- certificates made by the test ----------------------------------------------------------------
def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, usage: x509.ObjectIdentifier | None) -> x509.Certificate:
    """A CA certificate (``usage`` None, self-signed when ``issuer`` is None) or a leaf for ``usage``."""
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=usage is None, path_length=None), critical=True))
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    else:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(out: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    path = out / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = out / f"{name}.key"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem (trusted by both ends), server.pem/.key, client.pem/.key (issued by ca), stranger.pem/.key
    (a client certificate from another CA), other-ca.pem."""
    out = tmp_path_factory.mktemp("pki")
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("pinnacle test CA", ca_key, None, ca_key, None)
    other = _cert("another CA", other_key, None, other_key, None)
    _write(out, "ca", ca)
    _write(out, "other-ca", other)
    for name, issuer, issuer_key, usage in (("server", ca, ca_key, ExtendedKeyUsageOID.SERVER_AUTH),
                                            ("client", ca, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH),
                                            ("stranger", other, other_key, ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(out, name, _cert(name, key, issuer, issuer_key, usage), key)
    return out


# ----- servers ----------------------------------------------------------------------------------------
def _htpasswd(path: Path) -> Path:
    """nginx's ``{SSHA}`` scheme (no htpasswd binary needed): base64(sha1(password + salt) + salt)."""
    salt = os.urandom(8)
    digest = hashlib.sha1(PASSWORD.encode() + salt).digest()
    path.write_text(f"{USER}:{{SSHA}}{base64.b64encode(digest + salt).decode()}\n")
    return path


@pytest.fixture(scope="module")
def basic_server(repo: Repo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxServer]:
    users = _htpasswd(tmp_path_factory.mktemp("htpasswd") / "users")
    with NginxServer(repo.dir, server_extra=f'        auth_basic "pinnacle"; auth_basic_user_file "{users}";\n') \
            as server:
        yield server


@pytest.fixture(scope="module")
def token_server(repo: Repo) -> Iterator[NginxServer]:
    extra = (f'        if ($http_authorization != "Bearer {TOKEN}") {{ return 401; }}\n'
             f'        if ($http_x_tenant != "{HEADER_SECRET}") {{ return 401; }}\n')
    with NginxServer(repo.dir, server_extra=extra) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(repo: Repo, pki: Path) -> Iterator[NginxServer]:
    extra = (f'        ssl_certificate "{pki / "server.pem"}"; ssl_certificate_key "{pki / "server.key"}";\n'
             f'        ssl_client_certificate "{pki / "ca.pem"}"; ssl_verify_client on;\n')
    with NginxServer(repo.dir, server_extra=extra, tls=True) as server:
        yield server


# ----- helpers ----------------------------------------------------------------------------------------
def _secret_file(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


def _client(tmp_path: Path, url: str, repo: Repo, **settings: Any) -> Path:
    install = tmp_path / "install"
    config.init(install, url, repo.root_json, "stable", "any", health_command="test -f healthy",
                health_interval=0.0, health_retries=1, **settings)
    return install


def _snapshot(install: Path) -> dict[str, bytes]:
    """Every regular file of the install directory with its bytes (what 'nothing changes' compares), but
    ngclient's copy of the shipped root that its first refresh keeps in tuf/ whatever the server says."""
    return {str(p.relative_to(install)): p.read_bytes() for p in sorted(install.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != "lock" and p.relative_to(install).parts[0] != "tuf"}


def _install(install: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {name: "" for name in ("PINNACLE_REPO_TOKEN", "PINNACLE_REPO_USERNAME", "PINNACLE_REPO_PASSWORD",
                                  "PINNACLE_REPO_HEADERS", "PINNACLE_REPO_CLIENT_CERT", "PINNACLE_REPO_CLIENT_KEY",
                                  "PINNACLE_REPO_CA_BUNDLE")}
    return run_cli("pinnacle-update", "--install-dir", str(install), "install", env={**base, **(env or {})},
                   check=False)


def _refused(install: Path, url: str, env: dict[str, str] | None = None) -> str:
    """Install fails with RepositoryError's code, one line naming the repository, nothing changed."""
    before = _snapshot(install)
    proc = _install(install, env)
    assert proc.returncode == RepositoryError.exit_code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert url.rstrip("/") in lines[0] and "Traceback" not in proc.stderr
    assert not any(s in proc.stderr + proc.stdout for s in SECRETS)
    assert _snapshot(install) == before
    assert not (install / "current").exists()
    return lines[0]


def _installed(install: Path) -> None:
    assert (install / "current" / "VERSION").read_text() == "1.0.0\n"


# ----- basic auth ---------------------------------------------------------------------------------------
def test_basic_auth_missing_or_wrong_is_one_line_and_changes_nothing(
        tmp_path: Path, repo: Repo, basic_server: NginxServer) -> None:
    install = _client(tmp_path, basic_server.url, repo)
    line = _refused(install, basic_server.url)
    assert "without valid credentials" in line and "401" in line
    wrong = _secret_file(tmp_path, "wrong", "not-the-password")
    config.set_value(install, "repo_username", USER)
    config.set_value(install, "repo_password_file", wrong)
    _refused(install, basic_server.url)
    _refused(install, basic_server.url, {"PINNACLE_REPO_USERNAME": "mallory", "PINNACLE_REPO_PASSWORD": PASSWORD})


def test_basic_auth_from_a_password_file_installs(tmp_path: Path, repo: Repo, basic_server: NginxServer) -> None:
    install = _client(tmp_path, basic_server.url, repo, repo_username=USER,
                      repo_password_file=_secret_file(tmp_path, "password", PASSWORD))
    proc = _install(install)
    assert proc.returncode == 0, proc.stderr
    _installed(install)


def test_basic_auth_from_the_environment_installs(tmp_path: Path, repo: Repo, basic_server: NginxServer) -> None:
    install = _client(tmp_path, basic_server.url, repo)
    proc = _install(install, {"PINNACLE_REPO_USERNAME": USER, "PINNACLE_REPO_PASSWORD": PASSWORD})
    assert proc.returncode == 0, proc.stderr
    _installed(install)


def test_a_secret_file_others_can_read_is_refused(tmp_path: Path, repo: Repo, basic_server: NginxServer) -> None:
    shared = _secret_file(tmp_path, "password", PASSWORD)
    os.chmod(shared, 0o644)
    install = _client(tmp_path, basic_server.url, repo, repo_username=USER, repo_password_file=shared)
    before = _snapshot(install)
    proc = _install(install)
    assert proc.returncode == ConfigError.exit_code
    assert proc.stderr.count("\n") == 1 and "readable by other users" in proc.stderr and shared in proc.stderr
    assert PASSWORD not in proc.stderr and _snapshot(install) == before


# ----- bearer token and extra headers ------------------------------------------------------------------
def test_bearer_token_and_extra_header(tmp_path: Path, repo: Repo, token_server: NginxServer) -> None:
    install = _client(tmp_path, token_server.url, repo,
                      repo_headers_file=_secret_file(tmp_path, "headers", f"# tenant\nX-Tenant: {HEADER_SECRET}"))
    _refused(install, token_server.url)  # the header alone is not enough
    _refused(install, token_server.url, {"PINNACLE_REPO_TOKEN": "tok-wrong"})
    proc = _install(install, {"PINNACLE_REPO_TOKEN": TOKEN})
    assert proc.returncode == 0, proc.stderr
    _installed(install)


# ----- mutual TLS ---------------------------------------------------------------------------------------
def test_mtls_right_certificate_installs_others_are_refused(
        tmp_path: Path, repo: Repo, pki: Path, mtls_server: NginxServer) -> None:
    install = _client(tmp_path, mtls_server.url, repo, repo_ca_bundle=str(pki / "ca.pem"))
    assert "check repo_client_cert" in _refused(install, mtls_server.url)  # no client certificate: nginx's 400
    stranger = {"PINNACLE_REPO_CLIENT_CERT": str(pki / "stranger.pem"),
                "PINNACLE_REPO_CLIENT_KEY": str(pki / "stranger.key")}
    _refused(install, mtls_server.url, stranger)  # a certificate from another CA
    right = {"PINNACLE_REPO_CLIENT_CERT": str(pki / "client.pem"), "PINNACLE_REPO_CLIENT_KEY": str(pki / "client.key")}
    line = _refused(install, mtls_server.url, {**right, "PINNACLE_REPO_CA_BUNDLE": str(pki / "other-ca.pem")})
    assert "certificate" in line.lower()  # the server's certificate does not verify against that bundle
    mismatch = {**right, "PINNACLE_REPO_CLIENT_KEY": str(pki / "stranger.key")}
    proc = _install(install, mismatch)  # a key that is not the certificate's: a config error, before any request
    assert proc.returncode == ConfigError.exit_code and "cannot be used for TLS" in proc.stderr
    config.set_value(install, "repo_client_cert", str(pki / "client.pem"))
    config.set_value(install, "repo_client_key", str(pki / "client.key"))
    proc = _install(install)
    assert proc.returncode == 0, proc.stderr
    _installed(install)


# ----- where credentials go -------------------------------------------------------------------------------
class _Recorder:
    """A plain server on 127.0.0.1 that records the headers of each GET and answers ``answer(path)``."""

    def __init__(self, answer: Any) -> None:
        self.seen: list[dict[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.seen.append({k.lower(): v for k, v in self.headers.items()})
                status, headers, body = answer(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_credentials_never_follow_a_redirect_to_another_origin(tmp_path: Path, repo: Repo) -> None:
    cdn = _Recorder(lambda path: (200, {}, b"from the cdn"))
    origin = _Recorder(lambda path: (302, {"Location": f"{cdn.url}x"}, b""))
    try:
        install = _client(tmp_path, origin.url, repo, repo_token_file=_secret_file(tmp_path, "token", TOKEN),
                          repo_headers_file=_secret_file(tmp_path, "headers", f"X-Tenant: {HEADER_SECRET}"))
        access = load(config.load(install), install, environ={})
        assert access is not None and TOKEN not in repr(access) and HEADER_SECRET not in repr(access)
        with HttpxFetcher(access=access) as fetcher:
            assert b"".join(fetcher.fetch(f"{origin.url}metadata/timestamp.json")) == b"from the cdn"
    finally:
        cdn.close()
        origin.close()
    assert origin.seen[0]["authorization"] == f"Bearer {TOKEN}" and origin.seen[0]["x-tenant"] == HEADER_SECRET
    assert "authorization" not in cdn.seen[0] and "x-tenant" not in cdn.seen[0]


@pytest.mark.parametrize(("settings", "env", "expected"), [
    ({"repo_username": USER}, {}, "needs a user name and a password"),
    ({}, {"PINNACLE_REPO_PASSWORD": PASSWORD}, "needs a user name and a password"),
    ({"repo_username": USER}, {"PINNACLE_REPO_PASSWORD": PASSWORD, "PINNACLE_REPO_TOKEN": TOKEN}, "both set"),
    ({}, {"PINNACLE_REPO_TOKEN": "two words"}, "one word of visible ASCII"),
    ({}, {"PINNACLE_REPO_HEADERS": f"Host: {HEADER_SECRET}"}, "set by the client itself"),
    ({}, {"PINNACLE_REPO_HEADERS": "no colon here"}, "is not 'Name: value'"),
    ({"repo_client_key": "/nonexistent/key.pem"}, {}, "without repo_client_cert"),
    ({"repo_ca_bundle": "/nonexistent/ca.pem"}, {}, "cannot read the repository's CA bundle"),
    ({"repo_token_file": "missing-token"}, {}, "cannot read repo_token_file"),
    ({}, {"PINNACLE_REPO_USERNAME": "a:b", "PINNACLE_REPO_PASSWORD": PASSWORD}, "without ':'"),
])
def test_bad_credential_settings_are_one_line_config_errors(
        tmp_path: Path, repo: Repo, settings: dict[str, str], env: dict[str, str], expected: str) -> None:
    install = _client(tmp_path, "https://updates.example.com/", repo, **settings)
    with pytest.raises(ConfigError) as caught:
        load(config.load(install), install, environ=env)
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert not any(s in message for s in SECRETS)


def test_a_ca_bundle_without_certificates_is_a_config_error(tmp_path: Path, repo: Repo) -> None:
    (tmp_path / "not-a-ca.pem").write_text("no certificate here\n")
    install = _client(tmp_path, "https://updates.example.com/", repo, repo_ca_bundle=str(tmp_path / "not-a-ca.pem"))
    with pytest.raises(ConfigError, match="repo_ca_bundle cannot be used for TLS"):
        load(config.load(install), install, environ={})


def test_a_user_name_with_a_colon_is_refused_by_config_set(tmp_path: Path, repo: Repo) -> None:
    install = _client(tmp_path, "https://updates.example.com/", repo)
    with pytest.raises(ConfigError, match="without ':'") as caught:
        config.set_value(install, "repo_username", f"alice:{PASSWORD}")
    assert PASSWORD not in str(caught.value)  # a password typed there by mistake is not repeated


def test_credentials_over_plain_http_go_only_to_this_machine(tmp_path: Path, repo: Repo) -> None:
    install = _client(tmp_path, "http://updates.example.com/", repo)
    with pytest.raises(ConfigError, match="plain http"):
        load(config.load(install), install, environ={"PINNACLE_REPO_TOKEN": TOKEN})


# ----- no credential anywhere -------------------------------------------------------------------------------
def test_no_credential_in_any_output_log_or_file(tmp_path: Path, repo: Repo, basic_server: NginxServer) -> None:
    """A whole run with basic auth and an extra header: check, config show, install, status, history, doctor
    (text and --json), a refused run, the agent's API; then every file of the install dir (logs/ included)."""
    install = tmp_path / "install"
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    password = _secret_file(secrets_dir, "password", PASSWORD)
    headers = _secret_file(secrets_dir, "headers", f"X-Tenant: {HEADER_SECRET}")
    outputs: list[str] = []

    def cli(*args: str, env: dict[str, str] | None = None, ok: bool = True) -> None:
        proc = run_cli("pinnacle-update", "--install-dir", str(install), *args, env=env, check=ok)
        outputs.extend((proc.stdout, proc.stderr))

    config.init(install, basic_server.url, repo.root_json, "stable", "any", health_command="test -f healthy",
                repo_username=USER, repo_password_file=password, repo_headers_file=headers)
    cli("check")
    cli("config", "show")
    cli("config", "show", "--json")
    cli("install", "--json")
    _installed(install)
    for args in (("status", "--json"), ("history",), ("doctor", "--json")):
        cli(*args, ok=False)  # doctor may find something to say about this machine; the output is what counts
    cli("check", env={"PINNACLE_REPO_PASSWORD": "wrong-" + PASSWORD}, ok=False)  # a refused run, error output
    with run_agent(install) as agent:  # the agent's API and its log
        checked = agent.post("/api/updates/check", {})
        assert checked.status_code == 200, checked.text
        for path in ("/api/updates/status", "/api/updates/config", "/api/updates/history", "/api/updates/channels",
                     "/api/health", "/api/updates/analytics"):
            outputs.append(agent.get(path, headers=agent.auth()).text)
        outputs.append(checked.text)
    text = "\n".join(outputs)
    assert basic_server.url.rstrip("/") in text  # the repository is named ...
    for secret in SECRETS:  # ... its credentials never
        assert secret not in text
        for path in install.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert secret.encode() not in path.read_bytes(), f"{secret!r} in {path}"
