"""``AutoUpdater.record_metric`` (issue 20 item 4): an application's numeric metrics ride on the next
report about the running version, with real installs over the suite's repository server and the
reporting tests' collector stand-in (the wire format's own parser). Bad names and values are one-line
``ConfigError``s; with reporting off nothing is kept."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pinnacle_updates.client import AutoUpdater, reporting
from pinnacle_updates.client import config as config_mod
from pinnacle_updates.client.errors import ConfigError, HealthCheckError
from pinnacle_updates.formats.exitcodes import ExitCode
from pinnacle_updates.formats.report import MAX_METRICS
from tests.client.test_reporting import collector
from tests.conftest import run_cli
from tests.helpers_client import app_files, init_client, make_repo, publish, serve


@pytest.fixture(scope="module")
def root_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One repository's root metadata for every install directory below (none of them downloads)."""
    return make_repo(tmp_path_factory.mktemp("repo")).root_json


def install_dir(where: Path, root: Path, **settings: str) -> Path:
    config_mod.init(where, "http://127.0.0.1:9/", root, "stable", "linux-x86_64",
                    **{"report_url": "http://127.0.0.1:9/", **settings})
    return where


def test_metrics_ride_on_the_next_report_about_the_running_version(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    with collector() as server, serve(repo.dir) as url:
        d = tmp_path / "client"
        ins = init_client(d, url, repo, report_url=server.url)
        updater = AutoUpdater(d)
        publish(repo, "1.0.0", app_files("1.0.0"))
        assert ins.install("1.0.0").outcome == "committed"
        assert updater.record_metric("startup_ms", 100) is True
        assert updater.record_metric("startup_ms", 200.5) is True
        assert updater.record_metric("errors.count", 3) is True
        # a rolled-back install is about the version that failed, not the one running: no metrics on it
        publish(repo, "1.1.0", app_files("1.1.0", healthy=False))
        with pytest.raises(HealthCheckError):
            ins.install("1.1.0")
        assert set(reporting.Reports(d).pending_metrics()) == {"startup_ms", "errors.count"}
        publish(repo, "1.2.0", app_files("1.2.0"))
        assert ins.install("1.2.0").outcome == "committed"
        assert reporting.Reports(d).pending_metrics() == {}
        assert reporting.flush(d, 30, force=True).left == 0
        stored = list(server.stored.values())
    carrying = [r for r in stored if r.metrics]
    assert len(carrying) == 1, [(r.kind, r.outcome, r.to_version, dict(r.metrics)) for r in stored]
    report = carrying[0]
    assert (report.kind, report.outcome, report.to_version, report.current_version) == \
        ("install", "committed", "1.2.0", "1.2.0")
    assert dict(report.metrics) == {"errors.count": 3.0, "startup_ms": 150.25}  # each name's mean
    rolled = next(r for r in stored if r.outcome == "rolled_back")
    assert rolled.metrics == {} and "metrics" not in rolled.to_dict()  # what older collectors accept


BAD = [
    ("Startup", 1.0, "name 'Startup' is not like"),
    ("", 1.0, "name '' is not like"),
    ("9lives", 1.0, "is not like"),
    ("a" * 49, 1.0, "is not like"),
    ("a-b", 1.0, "is not like"),
    ("x", math.nan, "nan is not a finite number"),
    ("x", math.inf, "inf is not a finite number"),
    ("x", 1e16, "is not a finite number within +-1e+15"),
    ("x", True, "expected a number, not a boolean"),
    ("x", "3", "expected a number, not a string"),
]


def test_bad_metrics_are_one_line_config_errors(tmp_path: Path, root_json: Path) -> None:
    d = install_dir(tmp_path / "d", root_json)
    for name, value, words in BAD:
        with pytest.raises(ConfigError) as info:
            AutoUpdater(d).record_metric(name, value)  # type: ignore[arg-type]
        message = str(info.value)
        assert words in message and "\n" not in message and message.startswith("cannot record metric: "), message
        assert info.value.exit_code == ConfigError.exit_code
    assert not (d / "reports" / "metrics.json").exists()


def test_at_most_sixteen_names_wait_and_reporting_off_keeps_nothing(tmp_path: Path, root_json: Path) -> None:
    d = install_dir(tmp_path / "d", root_json)
    updater = AutoUpdater(d)
    for i in range(MAX_METRICS):
        assert updater.record_metric(f"m{i}", i)
    assert updater.record_metric("m0", 5)  # a name already waiting takes more values
    with pytest.raises(ConfigError, match="16 other metrics are waiting"):
        updater.record_metric("one.more", 1)
    pending = json.loads((d / "reports" / "metrics.json").read_text())
    assert len(pending) == MAX_METRICS and pending["m0"] == [2, 5.0]

    off = install_dir(tmp_path / "off", root_json, report="off")
    assert AutoUpdater(off).record_metric("startup_ms", 1) is False
    assert not (off / "reports").exists()


def test_the_metric_command(tmp_path: Path, root_json: Path) -> None:
    """``pinnacle-update metric NAME VALUE`` for applications that are not Python (a hook, a script)."""
    d = install_dir(tmp_path / "d", root_json)
    base = ("--install-dir", str(d), "metric")
    kept = run_cli("pinnacle-update", *base, "startup_ms", "212.5")
    assert kept.stdout.strip() == "startup_ms = 212.5: kept for the next report"
    shown = json.loads(run_cli("pinnacle-update", *base, "startup_ms", "7", "--json").stdout)
    assert shown == {"name": "startup_ms", "value": 7.0, "kept": True}
    assert reporting.Reports(d).pending_metrics() == {"startup_ms": (2, 219.5)}
    for args, code, words in ((("Startup", "1"), ConfigError.exit_code, "cannot record metric: metrics: name"),
                              (("x", "nan"), ConfigError.exit_code, "nan is not a finite number"),
                              (("x", "twelve"), ExitCode.USAGE, "'twelve' is not a valid float")):
        result = run_cli("pinnacle-update", *base, *args, check=False)
        assert result.returncode == code, (args, result.stderr)
        assert words in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
    assert reporting.Reports(d).pending_metrics() == {"startup_ms": (2, 219.5)}  # the refusals kept nothing
    off = install_dir(tmp_path / "off", root_json, report="off")
    assert "not kept: reporting is off" in run_cli("pinnacle-update", "--install-dir", str(off), "metric", "a",
                                                   "1").stdout
