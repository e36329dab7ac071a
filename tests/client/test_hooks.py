"""Hooks and health checks with real processes and a real HTTP server; the config file."""

from __future__ import annotations

import http.server
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pinnacle_updates.client import config
from pinnacle_updates.client.errors import ConfigError
from pinnacle_updates.client.hooks import HealthSettings, HookContext, check_health, measure_latency, run_command


@pytest.fixture
def ctx(tmp_path: Path) -> HookContext:
    slot = tmp_path / "slots" / "b"
    slot.mkdir(parents=True)
    return HookContext(tmp_path, "b", slot, "2.0.0", previous_version="1.0.0", previous_slot="a")


def test_hook_runs_in_the_slot_with_the_contract_environment(ctx: HookContext) -> None:
    result = run_command(
        "post_swap",
        'pwd -P > "$PINNACLE_INSTALL_DIR/out"; echo "$PINNACLE_VERSION $PINNACLE_SLOT $PINNACLE_INSTALL_DIR '
        '$PINNACLE_PREVIOUS_VERSION" >> "$PINNACLE_INSTALL_DIR/out"',
        ctx,
        timeout=10,
    )
    assert result.ok, result.describe()
    cwd, line = (ctx.install_dir / "out").read_text().splitlines()
    assert Path(cwd) == ctx.slot_dir.resolve()
    assert line == f"2.0.0 b {ctx.install_dir} 1.0.0"


def test_hooks_do_not_see_the_agents_secrets(ctx: HookContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINNACLE_SMTP_PASSWORD", "hunter2")
    monkeypatch.setenv("SOME_APP_SETTING", "kept")
    result = run_command("post_swap", 'env > "$PINNACLE_INSTALL_DIR/env"', ctx, timeout=10)
    assert result.ok, result.describe()
    seen = (ctx.install_dir / "env").read_text()
    assert "hunter2" not in seen and "SOME_APP_SETTING=kept" in seen


def test_hook_failure_is_described_in_one_line(ctx: HookContext) -> None:
    result = run_command("post_swap", "echo migrating; echo 'migration 7 failed' >&2; exit 3", ctx, timeout=10)
    assert not result.ok and result.returncode == 3
    assert (
        result.describe()
        == "post_swap `echo migrating; echo 'migration 7 failed' >&2; exit 3` exited 3: migration 7 failed"
    )
    assert "migration 7 failed" in (ctx.install_dir / "hooks.log").read_text()


def test_hook_timeout_kills_the_whole_process_group(ctx: HookContext) -> None:
    marker = ctx.install_dir / "survivor"
    start = time.monotonic()
    result = run_command("start_command", f"(sleep 2; touch {marker}) & sleep 30", ctx, timeout=0.5)
    assert result.timed_out and not result.ok
    assert "timed out" in result.describe()
    assert time.monotonic() - start < 10
    time.sleep(2.5)
    assert not marker.exists(), "a child of the timed-out hook survived"


def test_background_daemon_does_not_hang_the_hook(ctx: HookContext) -> None:
    # a start_command that leaves a service running must return when the shell exits
    result = run_command("start_command", "sleep 5 & echo started", ctx, timeout=4)
    assert result.ok, result.describe()


def test_empty_hook_is_a_no_op(ctx: HookContext) -> None:
    assert run_command("stop_command", "  ", ctx, timeout=1).ok


def test_health_command_retries_until_healthy(ctx: HookContext) -> None:
    counter = ctx.install_dir / "count"
    cmd = f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; [ $n -ge 3 ]"
    slept: list[float] = []
    settings = HealthSettings(command=cmd, retries=3, interval=0.25, grace_period=1.5)
    result = check_health(settings, ctx, sleep=slept.append)
    assert result.healthy and result.attempts == 3
    assert slept == [1.5, 0.25, 0.25]  # grace period first, then the interval between attempts


def test_health_command_gives_up_after_retries(ctx: HookContext) -> None:
    result = check_health(HealthSettings(command="test -f healthy", retries=2, interval=0), ctx)
    assert not result.healthy and result.attempts == 2
    assert result.reason.startswith("unhealthy after 2 attempt(s): health_command `test -f healthy` exited 1")


def test_health_command_timeout_counts_as_unhealthy(ctx: HookContext) -> None:
    result = check_health(HealthSettings(command="sleep 10", timeout=0.3, retries=1), ctx)
    assert not result.healthy and "timed out" in result.reason


def test_no_health_check_configured_is_healthy(ctx: HookContext) -> None:
    assert check_health(HealthSettings(), ctx).healthy


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200
    delay = 0.0

    def do_GET(self) -> None:
        time.sleep(type(self).delay)
        self.send_response(type(self).status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/health", handler
    finally:
        srv.shutdown()
        srv.server_close()


def test_health_url(ctx: HookContext, server: tuple[str, type[_Handler]]) -> None:
    url, handler = server
    assert check_health(HealthSettings(url=url, retries=1), ctx).healthy
    handler.status = 503
    result = check_health(HealthSettings(url=url, retries=2, interval=0), ctx)
    assert not result.healthy and "answered HTTP 503" in result.reason
    dead = check_health(HealthSettings(url="http://127.0.0.1:9/health", retries=1, timeout=1), ctx)
    assert not dead.healthy and "unreachable" in dead.reason


def test_latency_degradation_is_a_failure(ctx: HookContext, server: tuple[str, type[_Handler]]) -> None:
    url, handler = server
    baseline = measure_latency(url, timeout=5)
    assert baseline is not None
    settings = HealthSettings(url=url, retries=1, max_latency_ms=150)
    assert check_health(settings, ctx, baseline_ms=baseline).healthy
    handler.delay = 0.4
    result = check_health(settings, ctx, baseline_ms=baseline)
    assert not result.healthy and result.reason.startswith("performance degraded")
    assert result.latency_ms is not None and result.latency_ms >= 400


# ----- config ---------------------------------------------------------------------------------
def _root(tmp_path: Path) -> Path:
    root = tmp_path / "root.json"
    root.write_text('{"signed": {"_type": "root"}, "signatures": []}')
    return root


def test_init_writes_config_root_and_layout(tmp_path: Path) -> None:
    d = tmp_path / "inst"
    cfg = config.init(d, "http://127.0.0.1:1/repo", _root(tmp_path), "beta", "linux-x86_64")
    assert len(cfg.text("client_id")) == 32
    raw = tomllib.loads((d / "config.toml").read_text())
    assert raw["channel"] == "beta" and raw["platform"] == "linux-x86_64"
    assert raw["persistent_paths"] == ["logs", "uploads", "temp"]
    for key in config.KEYS:
        assert key in raw, key
    assert (d / "root.json").read_bytes() == _root(tmp_path).read_bytes()
    for sub in ("slots/a", "slots/b", "cache", "tuf", "data", "manifests"):
        assert (d / sub).is_dir(), sub
    assert (d / "state.json").exists() and (d / "lock").exists()
    with pytest.raises(ConfigError, match="already initialised"):
        config.init(d, "http://x/", _root(tmp_path), "beta", "any")
    # a second init elsewhere gets another id
    other = config.init(tmp_path / "inst2", "/srv/repo", _root(tmp_path), "stable", "auto")
    assert other.text("client_id") != cfg.text("client_id")
    assert other.text("platform").count("-") == 1


def test_init_refuses_a_non_root(tmp_path: Path) -> None:
    bad = tmp_path / "t.json"
    bad.write_text('{"signed": {"_type": "timestamp"}}')
    with pytest.raises(ConfigError, match="not root"):
        config.init(tmp_path / "d", "http://x/", bad, "stable", "any")
    bad.write_text("garbage")
    with pytest.raises(ConfigError, match="is not TUF root metadata"):
        config.init(tmp_path / "d", "http://x/", bad, "stable", "any")


def test_set_value_validates_and_rewrites(tmp_path: Path) -> None:
    d = tmp_path / "inst"
    config.init(d, "http://127.0.0.1:1/", _root(tmp_path), "stable", "any")
    assert config.set_value(d, "health_retries", "5") == 5
    assert config.set_value(d, "auto_install", "no") is False
    assert config.set_value(d, "persistent_paths", "logs/, cache-data") == ["logs", "cache-data"]
    assert config.set_value(d, "allowed_update_types", '["patch", "security"]') == ["patch", "security"]
    weird = 'echo "a\\b"\ttab \u00e9'
    assert config.set_value(d, "post_swap", weird) == weird
    cfg = config.load(d)
    assert cfg.integer("health_retries") == 5 and cfg.text("post_swap") == weird
    assert cfg.to_update_config().allowed_update_types == {config.UpdateType.PATCH, config.UpdateType.SECURITY}
    before = (d / "config.toml").read_bytes()
    for key, value, message in [
        ("nope", "1", "unknown config key 'nope'"),
        ("health_retries", "many", "expected an integer"),
        ("health_retries", "0", "must be greater than 0"),
        ("auto_install", "maybe", "expected true or false"),
        ("persistent_paths", "../etc", "not a top-level name"),
        ("allowed_update_types", "patch,huge", "unknown update type 'huge'"),
        ("health_url", "ftp://x", "http"),
        ("channel", "bad channel!", "bad channel name"),
        ("client_id", "abc", "cannot be changed"),
    ]:
        with pytest.raises(ConfigError, match=message):
            config.set_value(d, key, value)
    assert (d / "config.toml").read_bytes() == before
    # deterministic: writing the same settings again gives the same bytes
    config.write(d, config.load(d))
    assert (d / "config.toml").read_bytes() == before


def test_load_refuses_unknown_keys_and_bad_toml(tmp_path: Path) -> None:
    d = tmp_path / "inst"
    config.init(d, "http://127.0.0.1:1/", _root(tmp_path), "stable", "any")
    text = (d / "config.toml").read_text()
    (d / "config.toml").write_text(text + "colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown config key 'colour'"):
        config.load(d)
    (d / "config.toml").write_text("repo_url = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(d)
    with pytest.raises(ConfigError, match="no config"):
        config.load(tmp_path / "elsewhere")
