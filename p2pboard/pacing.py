"""A token bucket: the send rate limit, so a large operation never floods the receivers."""

from __future__ import annotations


#: Bytes of rounding error forgiven, so float dust never holds a datagram back.
_SLACK = 1e-3


class TokenBucket:
    """``rate`` bytes per second on average, bursts of at most ``burst`` bytes.

    Time is passed in (seconds, any monotonic origin); the bucket reads no clock.
    """

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError(f"rate {rate} and burst {burst} must be positive")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at: float | None = None

    def _refill(self, now: float) -> None:
        if self._at is not None and now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        if self._at is None or now > self._at:
            self._at = now

    def try_consume(self, n: int, now: float) -> bool:
        """Take ``n`` bytes if the bucket holds them (a datagram larger than the burst
        passes once the bucket is full, so nothing can starve)."""
        self._refill(now)
        if self._tokens + _SLACK >= min(n, self.burst):
            self._tokens -= n
            return True
        return False

    def take(self, n: int, now: float) -> None:
        """Take ``n`` bytes unconditionally (after :meth:`ready_at` said a larger amount
        was there); the bucket may go below zero by float dust only."""
        self._refill(now)
        self._tokens -= n

    def ready_at(self, n: int, now: float) -> float:
        """When ``n`` bytes will be available."""
        self._refill(now)
        need = min(n, self.burst) - self._tokens
        if need <= _SLACK:
            return now
        # At least a microsecond: with clocks near 1e6 s, a smaller step would round back
        # to ``now`` and the caller would spin.
        return now + max(need / self.rate, 1e-6)
