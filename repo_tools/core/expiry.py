"""Pure expiry evaluation: which roles expire within a warning window.

No clock and no I/O: callers pass ``now`` and the expiry of each role (from the committed
metadata), so ``status --warn-days`` and tests share one rule. Expired roles are listed too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class RoleExpiry:
    """One role that expires inside the window (``remaining`` is negative once expired)."""

    role: str
    expires: datetime
    remaining: timedelta

    @property
    def expired(self) -> bool:
        return self.remaining <= timedelta(0)

    def describe(self) -> str:
        if self.expired:
            return f"{self.role} EXPIRED at {self.expires.strftime(TIME_FORMAT)}"
        hours = int(self.remaining.total_seconds() // 3600)
        left = f"{hours // 24}d {hours % 24}h" if hours >= 24 else f"{hours}h"
        return f"{self.role} expires {self.expires.strftime(TIME_FORMAT)} (in {left})"


def parse_time(text: str) -> datetime:
    """A TUF expiry string (``2030-01-01T00:00:00Z``) as an aware UTC datetime."""
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


def expiring(expiries: Mapping[str, datetime], now: datetime, within: timedelta) -> list[RoleExpiry]:
    """The roles whose expiry is at or before ``now + within``, soonest first."""
    soon = [RoleExpiry(role, when, when - now) for role, when in expiries.items() if when <= now + within]
    return sorted(soon, key=lambda r: (r.expires, r.role))
