"""What an install would do: the one policy path every check and install goes through.

``evaluate`` takes the verified channel index and applies, in this order: the fleet controls
(``client.fleet_state``: rollout holds, A/B groups, yanks, required versions from ``min_version``),
the update policy (``client.policy.decide``: types, majors, ``auto_install``, versions this machine
rolled back from), the return from a yanked release, and ``max_rollback_attempts``. The CLI's
``check`` and ``install``, the Python API and the agent (including its check on behalf of an
application that reports its own ``current_version``) all get their answer here.
"""

from __future__ import annotations

from pinnacle_updates.client import fleet_state, reporting
from pinnacle_updates.client.config import ClientConfig
from pinnacle_updates.client.delta import plan_update
from pinnacle_updates.client.errors import InstallError, RepositoryError, TrustError
from pinnacle_updates.client.install_dir import InstallDir, installed
from pinnacle_updates.client.policy import decide
from pinnacle_updates.client.results import CheckResult
from pinnacle_updates.client.slots import SlotState
from pinnacle_updates.client.trust import RepositoryClient
from pinnacle_updates.formats.fleet import FleetView
from pinnacle_updates.formats.index import ChannelIndex, FormatError, Release, parse_version


def evaluate(
    site: InstallDir,
    client: RepositoryClient,
    cfg: ClientConfig,
    s: SlotState,
    version: str | None,
    force: bool,
    confirm_major: bool,
    *,
    current_version: str | None = None,
) -> CheckResult:
    """Refresh ``client`` and say what installing ``version`` (None: what policy picks) would do.

    ``current_version``: answer for a client running that version instead of the installed one
    (an application asking for itself); the same fleet controls, policy and locally bad versions
    apply, and nothing is persisted for it."""
    try:
        client.refresh()
        index = client.channel_index(cfg.text("channel"))
    except (RepositoryError, TrustError) as exc:
        reporting.on_failed_check(site.layout.root, exc)
        raise
    reporting.after_refresh(site.layout.root, cfg, index)  # the signed feedback setting, the heartbeat
    releases = index.for_platform(cfg.text("platform"))
    assumed = current_version is not None and not _same_version(current_version, s.active_version)
    current = current_version if assumed else s.active_version
    attempts = cfg.integer("max_rollback_attempts")
    view = _fleet_view(site, client, cfg, s, index, releases, current if assumed else None)
    try:
        wanted = index.find(version, cfg.text("platform")) if version is not None else None
    except FormatError as exc:
        raise InstallError(str(exc)) from exc
    if version is not None and wanted is None:  # older than the index's live window?
        wanted = client.archived_release(cfg.text("channel"), cfg.text("platform"), version)
        if wanted is not None:
            releases = sorted([*releases, wanted], key=lambda r: r.parsed_version)
    if wanted is not None and wanted.yanked is not None and not force:
        return CheckResult(current, False, None, None, 0, None, False,
                           f"{wanted.version} is yanked by the publisher ({wanted.yanked.reason}); "
                           f"'install {wanted.version} --force' installs it anyway")
    try:
        decision = decide(
            releases,
            current,
            cfg.to_update_config(),
            frozenset(s.bad_versions),
            requested_version=version,
            rolled_back=frozenset(s.rolled_back_versions),
            confirm_major=confirm_major,
            force=force,
            held=view.held,
            required=view.required,
        )
    except FormatError as exc:
        raise InstallError(str(exc)) from exc
    release, auto_release, reason = decision.release, decision.auto_release, decision.reason
    back = view.rollback_to if version is None and auto_release is None else None
    if back is not None:  # the installed release was yanked and nothing newer may be taken: go back
        auto_release = back if cfg.flag("enabled") else None
        if release is None:
            release, reason = back, f"returns to {back.version}"
    if view.note():
        reason = f"{reason}; {view.note()}"
    if release is not None:
        bad = s.bad_versions.get(release.version)
        if bad is not None and bad.rollbacks >= attempts:
            reason = (
                f"{release.version} was rolled back {bad.rollbacks} times (max_rollback_attempts "
                f"{attempts}); refused even with --force"
            )
            release = None
    if release is None:
        return CheckResult(current, False, None, None, 0, None, False, reason, fleet=view.to_dict_if_any())
    base = _published(releases, current) if assumed else installed(s)
    plan = plan_update(releases, base, release)
    return CheckResult(
        current_version=current,
        update_available=True,
        version=release.version,
        type=release.type.value,
        download_bytes=plan.total_bytes,
        path=plan.describe(),
        auto=release is auto_release,
        reason=reason,
        release=release,
        auto_release=auto_release,
        releases=tuple(releases),
        return_to=back,
        fleet=view.to_dict_if_any(),
    )


def _fleet_view(
    site: InstallDir,
    client: RepositoryClient,
    cfg: ClientConfig,
    s: SlotState,
    index: ChannelIndex,
    releases: list[Release],
    assumed: str | None,
) -> FleetView:
    """This install's view (persisted, changes logged), or, for an ``assumed`` version, the view of
    a client running it here (same id and clock; its other slot is unknown, so nothing returns
    instantly)."""
    if assumed is None:
        return fleet_state.view_for(site.layout, cfg, s, index, releases, client.signed_time())
    view, _ = fleet_state.assess(site.layout, cfg, index, releases, client.signed_time(), assumed,
                                 bad_versions=frozenset(s.bad_versions))
    return view


def _same_version(a: str, b: str | None) -> bool:
    return b is not None and parse_version(a) == parse_version(b)


def _published(releases: list[Release], version: str | None) -> tuple[str, str] | None:
    """(version, content sha256) of ``version`` as published: the base a delta would apply to."""
    wanted = parse_version(version) if version is not None else None
    found = next((r for r in releases if r.parsed_version == wanted), None)
    return (found.version, found.content.sha256) if found is not None else None
