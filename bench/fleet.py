"""Fleet benchmark (issue 5): 10,000 simulated clients through a staged rollout, a pause, a resume,
a yank and a security release, over real signed metadata.

The repository is built with the real publisher (``repo_tools.publish`` / ``repo_tools.fleet``, each
step a signed commit at a simulated time). At every step the metadata is refreshed and the channel
index loaded once through the real client path (``client.trust.RepositoryClient``: python-tuf's
ngclient, signatures, hashes, the index checks), then every client decides in process with the
real client code: ``formats.rollout.rollout_time`` (clock bounded by the signed time),
``formats.fleet.evaluate`` and ``client.policy.decide``; a client that may install unattended
installs (its previous version stays in its other slot), and a client whose release was yanked
goes to ``rollback_to``. Targets are independent: the schedule's own numbers written out here.

    .venv/bin/python bench/fleet.py [--clients 10000]

Exits 1 when a goal fails: eligible fraction within 1 point of the target at every step, no
client changes version while paused, 100% of clients on the yanked release roll back, and the
security release reaches 100% at the first check.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pinnacle_updates.client.policy import UpdateConfig, decide  # noqa: E402
from pinnacle_updates.client.trust import RepositoryClient  # noqa: E402
from pinnacle_updates.formats.fleet import evaluate  # noqa: E402
from pinnacle_updates.formats.index import Release  # noqa: E402
from pinnacle_updates.formats.rollout import newest_time, parse_schedule, rollout_time  # noqa: E402
from pinnacle_updates.repo_tools import fleet  # noqa: E402
from pinnacle_updates.repo_tools import publish as ops  # noqa: E402
from pinnacle_updates.repo_tools.keys import KeyStore, create_keys  # noqa: E402
from pinnacle_updates.repo_tools.store import Repository  # noqa: E402

SCHEDULE = {"type": "percentage", "initial_percentage": 10, "increase_percentage": 25, "increase_interval": 3600}
MAX_SKEW = 86400.0


@dataclass
class Client:
    id: str
    version: str
    other: str | None = None


class Fleet:
    def __init__(self, base: Path, n: int) -> None:
        self.keys = KeyStore(base / "keys")
        self.repo = Repository(base / "repo")
        self.base = base
        self.clients = [Client(hashlib.sha256(f"client-{i}".encode()).hexdigest()[:32], "1.0.0") for i in range(n)]
        self.config = UpdateConfig()
        self.load_seconds = 0.0
        self.decide_seconds = 0.0

    def releases(self) -> tuple[list[Release], str | None]:
        """The channel's releases through the real client trust path (fresh ngclient refresh)."""
        started = time.perf_counter()
        root = (self.repo.path / "metadata" / "1.root.json").read_bytes()
        with RepositoryClient(str(self.repo.path), self.base / "tuf", self.base / "cache", root) as client:
            client.refresh()
            index = client.channel_index("stable")
            signed = newest_time([client.signed_time(), index.updated])
        self.load_seconds += time.perf_counter() - started
        return index.for_platform("any"), signed.strftime("%Y-%m-%dT%H:%M:%SZ") if signed else None

    def step(self, now: datetime, version: str) -> tuple[float, int, int, int]:
        """Every client checks once at ``now``: (% eligible for ``version``, changed, rolled back
        from a yanked release, of which through the other slot)."""
        releases, signed = self.releases()
        started = time.perf_counter()
        floor = datetime.strptime(signed, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=now.tzinfo) if signed else None
        clock = rollout_time(now, floor, MAX_SKEW)
        eligible = changed = rolled_back = instant = 0
        for c in self.clients:
            view = evaluate(releases, c.version, c.id, "stable", clock, other_slot_version=c.other)
            standing = next(s for s in view.standings if s.version == version)
            eligible += not standing.held
            d = decide(releases, c.version, self.config, held=view.held, required=view.required)
            target = d.auto_release or view.rollback_to
            if target is None or target.version == c.version:
                continue
            changed += 1
            if view.installed_yank is not None:
                rolled_back += 1
                instant += target.version == c.other
            c.other, c.version = c.version, target.version
        self.decide_seconds += time.perf_counter() - started
        return eligible / len(self.clients) * 100, changed, rolled_back, instant

    def on(self, version: str) -> int:
        return sum(c.version == version for c in self.clients)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    args = parser.parse_args()
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pinnacle-fleet-") as tmp:
        base = Path(tmp)
        create_keys(base / "keys", passphrase=None)
        sim = Fleet(base, args.clients)
        ops.init_repository(sim.repo, sim.keys)
        t0 = ops.utcnow()

        def at(hours: float) -> datetime:
            return t0 + timedelta(hours=hours)

        def publish(version: str, kind: str, hours: float, **extra: object) -> None:
            src = base / f"src-{version}"
            (src / "bin").mkdir(parents=True)
            (src / "bin" / "app").write_text(f"#!/bin/sh\necho {version}\n")
            ops.publish(sim.repo, sim.keys, ops.PublishRequest("stable", version, kind, "any", src, deltas=0,
                                                               **extra), now=at(hours))  # type: ignore[arg-type]

        publish("1.0.0", "patch", 0)
        publish("1.1.0", "patch", 0, rollout=parse_schedule(SCHEDULE))
        print(f"fleet benchmark: {args.clients} clients, release 1.1.0 with schedule {SCHEDULE}")
        print(f"{'step':<44} {'target %':>9} {'eligible %':>11} {'diff':>6} {'changed':>8} {'on 1.1.0':>9}")

        def row(label: str, target: float, result: tuple[float, int, int, int], version: str = "1.1.0") -> None:
            got, changed = result[0], result[1]
            diff = got - target
            print(f"{label:<44} {target:>9.2f} {got:>11.2f} {diff:>+6.2f} {changed:>8} {sim.on(version):>9}")
            if abs(diff) > 1.0:
                failures.append(f"{label}: eligible {got:.2f}% vs target {target:.2f}%")

        for hours, target in ((0, 10), (0.5, 10), (1, 35), (2, 60)):
            row(f"t={hours}h", target, sim.step(at(hours), "1.1.0"))
        fleet.rollout(sim.repo, sim.keys, "stable", "1.1.0", pause=True, now=at(2.5))
        paused_changes = 0
        for hours in (2.5, 3, 6, 10):
            result = sim.step(at(hours), "1.1.0")
            paused_changes += result[1]
            row(f"t={hours}h paused (frozen at 60%)", 60, result)
        fleet.rollout(sim.repo, sim.keys, "stable", "1.1.0", resume=True, now=at(10))
        for hours, target in ((10, 60), (10.5, 85), (11.5, 100)):
            row(f"t={hours}h resumed (paused 7.5h)", target, sim.step(at(hours), "1.1.0"))
        on_yanked = sim.on("1.1.0")
        fleet.yank(sim.repo, sim.keys, "stable", "1.1.0", "bench: bad release", now=at(12))
        _, _, rolled_back, instant = result = sim.step(at(12), "1.1.0")
        row("t=12h yanked", 0, result)
        publish("1.2.0", "security", 13, rollout=parse_schedule(SCHEDULE))
        first = sim.step(at(13), "1.2.0")
        row("t=13h security 1.2.0 (first check)", 100, first, "1.2.0")

        print()
        print(f"clients that changed version while paused: {paused_changes}")
        share = rolled_back / on_yanked * 100 if on_yanked else 0.0
        print(f"on the yanked 1.1.0: {on_yanked}; rolled back at the first check: {rolled_back} ({share:.1f}%), "
              f"{instant} of them instantly through the other slot")
        security_full = sim.on("1.2.0") == args.clients
        reached = "at the first check after publishing (0 s of ramp)" if security_full else "NO"
        print(f"security release at 100%: {reached} ({sim.on('1.2.0')}/{args.clients} clients on 1.2.0)")
        checks = args.clients * 14
        print(f"metadata: {sim.load_seconds:.2f}s for 14 verified ngclient loads; decisions: {checks} in "
              f"{sim.decide_seconds:.2f}s ({checks / sim.decide_seconds:,.0f}/s)")
        if paused_changes:
            failures.append(f"{paused_changes} clients changed version while the rollout was paused")
        if rolled_back != on_yanked or not on_yanked:
            failures.append(f"only {rolled_back} of {on_yanked} clients on the yanked release rolled back")
        if not security_full:
            failures.append("the security release did not reach every client at the first check")
    for f in failures:
        print(f"FAIL: {f}")
    print("all goals met" if not failures else f"{len(failures)} goal(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
