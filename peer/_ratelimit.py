"""Upload rate limiting: a token bucket (pure, clock passed in) and its asyncio waiter.

Rule: `TokenBucket` does no I/O and reads no clock; it answers "how long until `n` bytes
may go" for a given `now`. `RateLimiter` is the only place that sleeps. A request larger
than the bucket is allowed to go once the bucket is full (it drives the level negative and
later senders wait it off), so no frame is ever refused for its size.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

from ._errors import UsageError

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b|bit)?(?:/s|ps)?\s*$", re.IGNORECASE)
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_rate(text: str) -> float:
    """Bytes per second from `100M`, `20MB/s`, `512KiB`, `800Mbit` (k=1000, Ki=1024)."""
    match = _RATE.match(text)
    if match is None:
        raise UsageError(f"--upload-limit {text!r}: expected a rate like 100M, 20MB/s, 800Mbit")
    number, prefix, binary, unit = match.groups()
    base = 1024 if binary else 1000
    rate = float(number) * float(base ** _UNITS[prefix.lower()])
    if unit is not None and unit.lower() == "bit":
        rate /= 8
    if rate <= 0:
        raise UsageError(f"--upload-limit {text!r}: the rate must be positive")
    return rate


class TokenBucket:
    """`rate` bytes per second, bursts up to `burst` bytes."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError(f"rate {rate} and burst {burst} must be positive")
        self.rate = rate
        self.burst = burst
        self._level = burst
        self._stamp = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._stamp)
        self._level = min(self.burst, self._level + elapsed * self.rate)
        self._stamp = max(self._stamp, now)

    def delay(self, size: int, now: float) -> float:
        """Seconds to wait before `size` bytes may go (0: now); takes nothing."""
        self._refill(now)
        need = min(float(size), self.burst)
        return 0.0 if self._level >= need else (need - self._level) / self.rate

    def take(self, size: int, now: float) -> None:
        """Spend `size` bytes (the level may go negative: later senders pay it off)."""
        self._refill(now)
        self._level -= size

    @property
    def level(self) -> float:
        return self._level


class RateLimiter:
    """Waits until a token bucket lets bytes go; shared by every upload of a daemon."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._bucket = TokenBucket(rate, burst or max(rate / 10, 64 * 1024), clock())
        self._lock = asyncio.Lock()

    async def acquire(self, size: int) -> None:
        """Return once `size` bytes may be sent; senders are served in arrival order."""
        async with self._lock:
            while (wait := self._bucket.delay(size, self._clock())) > 0:
                await asyncio.sleep(wait)
            self._bucket.take(size, self._clock())
