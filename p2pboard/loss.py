"""How much of what is sent to us we miss: a receiver's loss meter.

Every datagram number a source uses is either received or found missing (a gap in its
DATA numbers, or in a peer's SESSION count); a missing one that turns up later was late,
not lost. The meter counts both over a sliding window of about the last thousand numbers
(halving the counts whenever the window fills), and reports a lower confidence bound
(Wilson, 99% one-sided): a peer that heard 70 datagrams and missed 7 reports 4.3%, not
10%, and one that missed 1 of 32 reports 0.4%, less than an author acts on. Peers send
the bound in their SESSION (wire.Session.loss); an author about to send a block takes the
lossiest receiver's bound as the floor of its proactive parity
(session.Engine._adapt_parity), so a paste meets loss the receivers already knew about
with parity from its first block, instead of waiting for their NACKs (which a receiver
behind on a big paste sends only once it gets there).

Limit: one figure for all sources. On a switched LAN a receiver's loss is mostly its own
link or a busy host, the same for every sender; a single lossy sender's link shows in the
receivers' figures only in proportion to its share of their traffic.
"""

from __future__ import annotations

import math

#: numbers counted before the counts are halved
WINDOW = 1024
#: fewer than this many counted: report no loss (a guess from a handful is noise)
MIN_SAMPLES = 32
#: one-sided confidence of the reported lower bound (99%)
Z = 2.33
#: what the 16-bit wire field counts in
SCALE = 0xFFFF


class LossMeter:
    def __init__(self) -> None:
        self.seen = 0.0  # numbers received or found missing, in the window
        self.lost = 0.0  # of them found missing

    def received(self, n: int = 1) -> None:
        self.seen += n
        if self.seen > WINDOW:
            self._halve()

    def missed(self, n: int = 1) -> None:
        self.seen += n
        self.lost += n
        if self.seen > WINDOW:
            self._halve()

    def late(self) -> None:
        """A number counted as missed arrived after all (reordered, not lost)."""
        if self.lost >= 1:
            self.lost -= 1

    def _halve(self) -> None:
        self.seen *= 0.5
        self.lost *= 0.5

    @property
    def rate(self) -> float:
        return self.lost / self.seen if self.seen else 0.0

    def lower_bound(self) -> float:
        """The loss rate we are 99% sure is not above the truth (0 with too few counted)."""
        n = self.seen
        if n < MIN_SAMPLES or self.lost <= 0:
            return 0.0
        p = min(1.0, self.lost / n)
        z2 = Z * Z
        centre = p + z2 / (2 * n)
        spread = Z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
        return max(0.0, (centre - spread) / (1 + z2 / n))

    def report(self) -> int:
        """The lower bound as the SESSION field carries it."""
        return min(SCALE, round(self.lower_bound() * SCALE))
