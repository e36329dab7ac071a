"""Token buckets per key (an install id, a client address), bounded in memory.

Each key has a bucket of ``burst`` tokens refilled at ``rate`` per second; a request costing ``n``
tokens passes when every key it names has ``n`` tokens, and then takes them from all of them, or
takes nothing and says how long to wait. At most ``max_keys`` buckets are kept: the least recently
used one is forgotten first, which only ever gives that key a full bucket again (a flood needs far
more than ``max_keys`` distinct keys to gain from it, and the per-address limit still holds).
Used from the event loop only: no locking.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    """``rate`` tokens per second, at most ``burst`` saved up; ``rate <= 0`` turns the limit off."""

    rate: float
    burst: float

    @property
    def off(self) -> bool:
        return self.rate <= 0


class Buckets:
    def __init__(self, limit: Rate, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.limit.burst, now))
        return min(self.limit.burst, tokens + (now - at) * self.limit.rate)

    def take(self, costs: Mapping[str, float], now: float) -> float | None:
        """Take ``costs[key]`` tokens from each key's bucket: None when all had them, else the
        seconds (rounded up, at least 1) until the poorest one will, and nothing is taken."""
        if self.limit.off:
            return None
        wait = 0.0
        levels = {}
        for key, cost in costs.items():
            level = levels[key] = self._level(key, now)
            if cost > self.limit.burst:  # more than the bucket can ever hold: wait for a full one
                wait = max(wait, (self.limit.burst - level) / self.limit.rate, 1.0)
            elif level < cost:
                wait = max(wait, (cost - level) / self.limit.rate)
        if wait > 0:
            return float(max(1, math.ceil(wait)))
        for key, cost in costs.items():
            self._buckets[key] = (levels[key] - cost, now)
            self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return None
