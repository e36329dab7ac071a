"""client.policy and client.platform_tag: pure rules, tested exhaustively."""

from __future__ import annotations

import random

import pytest

from pinnacle_updates.client.errors import ConfigError
from pinnacle_updates.client.platform_tag import detect_platform, platform_tag
from pinnacle_updates.client.policy import Decision, UpdateConfig, decide, jittered_interval
from pinnacle_updates.formats.index import Digest, Release, TargetRef, UpdateType

T = UpdateType
H = "0" * 64


def rel(version: str, kind: UpdateType = T.PATCH) -> Release:
    base = f"stable/linux-x86_64/{version}"
    return Release(
        version=version,
        platform="linux-x86_64",
        type=kind,
        published="2026-01-01T00:00:00Z",
        content=Digest(1, H),
        full=TargetRef(f"{base}/full.tar.zst", 1, H),
        manifest=TargetRef(f"{base}/manifest.json.zst", 1, H),
    )


def versions(d: Decision) -> tuple[str | None, str | None]:
    return (d.release.version if d.release else None, d.auto_release.version if d.auto_release else None)


def check_reason(d: Decision) -> None:
    assert d.reason and "\n" not in d.reason


# -- config ------------------------------------------------------------------------------------


def test_config_defaults_are_the_seeds() -> None:
    c = UpdateConfig()
    assert (c.enabled, c.check_interval, c.auto_install, c.backup_before_update, c.max_rollback_days) == (
        True,
        3600,
        True,
        True,
        30,
    )
    assert c.allowed_update_types == frozenset(UpdateType)
    assert c.excluded_paths == ("logs/", "uploads/", "temp/")
    assert (c.channel, c.platform, c.max_rollback_attempts) == ("stable", "", 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"channel": "../x"},
        {"platform": "Linux x86"},
        {"check_interval": 0},
        {"check_interval": -5},
        {"max_rollback_days": -1},
        {"max_rollback_attempts": True},
        {"allowed_update_types": frozenset({"patch"})},
    ],
)
def test_config_refuses_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"^config: "):
        UpdateConfig(**kwargs)  # type: ignore[arg-type]


# -- one newer release of each type ------------------------------------------------------------

NEXT = {T.PATCH: "1.0.1", T.SECURITY: "1.0.1", T.HOTFIX: "1.0.1", T.MINOR: "1.1.0", T.MAJOR: "2.0.0"}
# (type, auto_install) -> (release chosen, installs unattended)
EXPECTED = {
    (T.PATCH, True): (True, True),
    (T.PATCH, False): (True, False),
    (T.SECURITY, True): (True, True),
    (T.SECURITY, False): (True, True),
    (T.HOTFIX, True): (True, True),
    (T.HOTFIX, False): (True, True),
    (T.MINOR, True): (True, False),
    (T.MINOR, False): (True, False),
    (T.MAJOR, True): (False, False),  # needs confirmation
    (T.MAJOR, False): (False, False),
}


@pytest.mark.parametrize(("kind", "auto_install"), sorted(EXPECTED, key=str))
def test_each_type_by_auto_install(kind: UpdateType, auto_install: bool) -> None:
    candidate = rel(NEXT[kind], kind)
    d = decide([rel("1.0.0"), candidate], "1.0.0", UpdateConfig(auto_install=auto_install))
    chosen, auto = EXPECTED[(kind, auto_install)]
    assert (d.release is candidate) is chosen
    assert d.auto is auto and (d.auto_release is candidate) is auto
    assert d.update_available is chosen
    check_reason(d)
    if kind is T.MAJOR:
        assert d.skipped[0].version == "2.0.0" and "confirmation" in d.skipped[0].why


def test_confirmed_major_is_chosen_but_never_automatic() -> None:
    major = rel("2.0.0", T.MAJOR)
    d = decide([major], "1.0.0", UpdateConfig(), confirm_major=True)
    assert d.release is major and d.auto_release is None and not d.auto
    check_reason(d)


def test_disabled_means_nothing_automatic() -> None:
    sec = rel("1.0.1", T.SECURITY)
    d = decide([sec], "1.0.0", UpdateConfig(enabled=False))
    assert d.release is sec and d.auto_release is None
    assert "disabled" in d.reason


def test_up_to_date_and_empty() -> None:
    d = decide([rel("0.9"), rel("1.0.0")], "1.0.0", UpdateConfig())
    assert versions(d) == (None, None) and d.reason.startswith("up to date")
    d = decide([], "1.0.0", UpdateConfig())
    assert versions(d) == (None, None) and "no release" in d.reason


# -- cumulative jumps --------------------------------------------------------------------------


def test_patch_installs_while_a_later_minor_is_offered() -> None:
    d = decide([rel("1.1.0", T.MINOR), rel("1.0.1"), rel("1.0.0")], "1.0.0", UpdateConfig())
    assert versions(d) == ("1.1.0", "1.0.1") and not d.auto
    assert d.reason == "1.0.1 (patch) installs automatically; 1.1.0 (minor) is available on request"


def test_security_fix_after_a_minor_installs_automatically() -> None:
    d = decide([rel("1.1.0", T.MINOR), rel("1.1.1", T.SECURITY)], "1.0.0", UpdateConfig(auto_install=False))
    assert versions(d) == ("1.1.1", "1.1.1") and d.auto


def test_patch_after_a_minor_is_not_automatic() -> None:
    d = decide([rel("1.1.0", T.MINOR), rel("1.1.1", T.PATCH)], "1.0.0", UpdateConfig())
    assert versions(d) == ("1.1.1", None)


def test_major_is_a_gate() -> None:
    releases = [rel("1.0.1"), rel("1.1.0", T.MINOR), rel("2.0.0", T.MAJOR), rel("2.0.1", T.SECURITY)]
    d = decide(releases, "1.0.0", UpdateConfig())
    assert versions(d) == ("1.1.0", "1.0.1")
    assert [(s.version, s.why.split(":")[0]) for s in d.skipped] == [
        ("2.0.0", "major update"),
        ("2.0.1", "comes after an unconfirmed major update"),
    ]
    d = decide(releases, "1.0.0", UpdateConfig(), confirm_major=True)
    assert versions(d) == ("2.0.1", "1.0.1")  # the security fix behind the major is not unattended


def test_major_not_allowed_even_when_confirmed() -> None:
    allowed = frozenset(UpdateType) - {T.MAJOR}
    d = decide([rel("2.0.0", T.MAJOR)], "1.0.0", UpdateConfig(allowed_update_types=allowed), confirm_major=True)
    assert versions(d) == (None, None) and "allowed_update_types" in d.reason


def test_allowed_types_filter_targets() -> None:
    only_security = UpdateConfig(allowed_update_types=frozenset({T.SECURITY}))
    d = decide([rel("1.0.1"), rel("1.0.2", T.SECURITY), rel("1.0.3")], "1.0.0", only_security)
    assert versions(d) == ("1.0.2", "1.0.2")
    assert [s.version for s in d.skipped] == ["1.0.1", "1.0.3"]
    d = decide([rel("1.0.1", T.SECURITY)], "1.0.0", UpdateConfig(allowed_update_types=frozenset({T.PATCH})))
    assert versions(d) == (None, None)
    check_reason(d)


# -- bad versions ------------------------------------------------------------------------------


def test_bad_version_is_skipped_but_later_ones_are_not() -> None:
    d = decide([rel("1.0.1"), rel("1.0.2")], "1.0.0", UpdateConfig(), bad_versions={"1.0.1"})
    assert versions(d) == ("1.0.2", "1.0.2")
    d = decide([rel("1.0.1"), rel("1.0.2")], "1.0.0", UpdateConfig(), bad_versions={"1.0.2"})
    assert versions(d) == ("1.0.1", "1.0.1")
    assert d.skipped[0].version == "1.0.2" and "rolled back" in d.skipped[0].why


def test_only_a_bad_version_available() -> None:
    d = decide([rel("1.0.1", T.SECURITY)], "1.0.0", UpdateConfig(), bad_versions={"1.0.1"})
    assert versions(d) == (None, None)
    assert d.reason == "no eligible update: 1.0.1 skipped (marked bad: this machine rolled back from it)"
    d = decide([rel("1.0.1", T.SECURITY)], "1.0.0", UpdateConfig(), bad_versions={"1.0.1"}, force=True)
    assert versions(d) == ("1.0.1", "1.0.1")


def test_bad_versions_compare_as_pep440() -> None:
    d = decide([rel("1.0.1")], "1.0.0", UpdateConfig(), bad_versions={"1.0.1.0"})
    assert d.release is None


# -- first install -----------------------------------------------------------------------------


def test_first_install_takes_the_newest() -> None:
    d = decide([rel("1.0.0"), rel("2.0.0", T.MAJOR)], None, UpdateConfig())
    assert versions(d) == ("2.0.0", "2.0.0")
    d = decide([rel("1.0.0"), rel("2.0.0", T.MAJOR)], None, UpdateConfig(auto_install=False))
    assert versions(d) == ("2.0.0", None)


# -- explicit requests -------------------------------------------------------------------------

RELEASES = [rel("0.9.0"), rel("1.0.0"), rel("1.1.0", T.MINOR), rel("2.0.0", T.MAJOR), rel("2.1.0", T.MINOR)]


def test_requested_newer_version() -> None:
    d = decide(RELEASES, "1.0.0", UpdateConfig(), requested_version="1.1.0")
    assert versions(d) == ("1.1.0", None) and not d.downgrade and d.reason == "1.1.0 (minor) as requested"


def test_requested_ignores_allowed_types_and_enabled() -> None:
    cfg = UpdateConfig(enabled=False, allowed_update_types=frozenset({T.SECURITY}))
    assert decide(RELEASES, "1.0.0", cfg, requested_version="1.1.0").release is not None


def test_requested_unknown_version() -> None:
    d = decide(RELEASES, "1.0.0", UpdateConfig(), requested_version="1.5")
    assert d.release is None and "not published" in d.reason


def test_requested_downgrade_needs_force() -> None:
    d = decide(RELEASES, "1.0.0", UpdateConfig(), requested_version="0.9.0")
    assert d.release is None and d.downgrade and "needs --force" in d.reason
    d = decide(RELEASES, "1.0.0", UpdateConfig(), requested_version="0.9.0", force=True)
    assert versions(d) == ("0.9.0", None) and d.downgrade


def test_requested_bad_version_needs_force() -> None:
    d = decide(RELEASES, "1.0.0", UpdateConfig(), {"1.1.0"}, requested_version="1.1.0")
    assert d.release is None and "marked bad" in d.reason
    d = decide(RELEASES, "1.0.0", UpdateConfig(), {"1.1.0"}, requested_version="1.1.0", force=True)
    assert versions(d) == ("1.1.0", None)


def test_requested_reinstall_needs_force() -> None:
    assert decide(RELEASES, "1.0.0", UpdateConfig(), requested_version="1.0").release is None
    assert decide(RELEASES, "1.0.0", UpdateConfig(), requested_version="1.0", force=True).release is not None


def test_requested_across_a_major_needs_confirmation() -> None:
    d = decide(RELEASES, "1.0.0", UpdateConfig(), requested_version="2.1.0")
    assert d.release is None and "crosses the major update 2.0.0" in d.reason
    d = decide(RELEASES, "1.0.0", UpdateConfig(), requested_version="2.1.0", force=True)
    assert d.release is None  # force is not confirmation
    d = decide(RELEASES, "1.0.0", UpdateConfig(), requested_version="2.1.0", confirm_major=True)
    assert versions(d) == ("2.1.0", None)
    assert decide(RELEASES, "2.0.0", UpdateConfig(), requested_version="2.1.0").release is not None


# -- loop interval and platform ----------------------------------------------------------------


def test_jittered_interval() -> None:
    rng = random.Random(3)
    values = [jittered_interval(3600, rng) for _ in range(500)]
    assert all(3240 <= v <= 3960 for v in values)
    assert len(set(values)) > 400  # actually spread
    assert jittered_interval(100, random.Random(1), spread=0) == 100
    with pytest.raises(ValueError):
        jittered_interval(100, rng, spread=1.5)


@pytest.mark.parametrize(
    ("system", "machine", "tag"),
    [
        ("Linux", "x86_64", "linux-x86_64"),
        ("Linux", "aarch64", "linux-arm64"),
        ("Linux", "armv7l", "linux-armv7"),
        ("Darwin", "arm64", "macos-arm64"),
        ("Darwin", "x86_64", "macos-x86_64"),
        ("Windows", "AMD64", "windows-x86_64"),
        ("Windows", "ARM64", "windows-arm64"),
        ("Windows", "x86", "windows-x86"),
        ("FreeBSD", "amd64", "freebsd-x86_64"),
        ("SunOS", "i86pc", "sunos-i86pc"),
        ("Linux", "mips-le", "linux-mips_le"),
    ],
)
def test_platform_tag(system: str, machine: str, tag: str) -> None:
    assert platform_tag(system, machine) == tag


def test_detect_platform_is_a_valid_tag() -> None:
    from pinnacle_updates.formats.index import check_platform

    assert check_platform(detect_platform()) == detect_platform()
