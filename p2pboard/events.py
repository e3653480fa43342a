"""Events the session engine reports to its user (the API, the UI, the CLI).

Each is a frozen value; ``peer`` fields are 32-bit peer ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ops import Color


@dataclass(frozen=True, slots=True)
class PeerJoined:
    peer: int
    name: str
    color: Color


@dataclass(frozen=True, slots=True)
class PeerUpdated:
    """A known peer changed its name or colour."""

    peer: int
    name: str
    color: Color


@dataclass(frozen=True, slots=True)
class PeerLeft:
    peer: int
    reason: str  #: "goodbye" or "timeout"


@dataclass(frozen=True, slots=True)
class SizeMismatch:
    """A peer on this group and port draws on a canvas of another size: not merged."""

    peer: int
    name: str
    size: tuple[int, int]


@dataclass(frozen=True, slots=True)
class VersionMismatch:
    """A peer speaks another protocol version: its datagrams are ignored."""

    peer: int
    version: int


@dataclass(frozen=True, slots=True)
class JoinComplete:
    """The board is now what the group holds (or we are the first peer here)."""

    source: int  #: the peer that sent the snapshot; 0 when nobody was here
    nbytes: int  #: size of the snapshot
    seconds: float  #: from the start of the join to now


@dataclass(frozen=True, slots=True)
class Unrecoverable:
    """Datagrams of a source that no peer could repair; a snapshot is asked for instead."""

    source: int
    count: int


@dataclass(frozen=True, slots=True)
class Silence:
    """Nothing heard from any other peer for ``seconds``. The network edge re-joins the
    multicast group when it sees this (switches that snoop IGMP without a querier stop
    forwarding a group after a few minutes); it comes again, less and less often, while
    the silence lasts."""

    seconds: float
    had_peers: bool  #: peers were here before (else we may simply be alone)


@dataclass(frozen=True, slots=True)
class OtherBoard:
    """Datagrams of another board share our group and port: ``kind`` is "protected" (a
    passphrase board, heard by an open one), "other-key" (another passphrase) or "open"
    (an open board, heard by a protected one). They are counted and never applied."""

    kind: str
    key_id: str | None  #: the other passphrase's public key id, when there is one


@dataclass(frozen=True, slots=True)
class Divergence:
    """A peer holds the same datagrams as we do but shows another board (a restarted
    peer, datagrams nobody could repair): we fetch its state and merge it."""

    peer: int


@dataclass(frozen=True, slots=True)
class CursorMoved:
    """A remote pointer (ephemeral: never stored or repaired)."""

    peer: int
    x: int
    y: int
    hidden: bool


Event = (PeerJoined | PeerUpdated | PeerLeft | SizeMismatch | VersionMismatch | JoinComplete
         | Unrecoverable | CursorMoved | Silence | Divergence | OtherBoard)
