"""Configuration of one peer: a validated, frozen value shared by the CLI and the API."""

from __future__ import annotations

import getpass
import ipaddress
import re
import socket
from dataclasses import dataclass, field

from .ops import Color
from .seal import BoardKey

DEFAULT_GROUP = "239.255.80.80"
DEFAULT_PORT = 47777
DEFAULT_SIZE = (1920, 1080)
MAX_SIDE = 8192
#: Default most a peer sends, in bytes per second (256 Mbit/s, about what a Python receiver
#: decodes). Pacing starts at 8 MB/s and follows the network up to it (session.Timers).
DEFAULT_RATE = 32_000_000
MAX_NAME = 32


class ConfigError(ValueError):
    """A setting given by the local user (flag or argument) that cannot work."""


def default_name() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database (containers): fall back quietly
        user = "user"
    return f"{user}@{socket.gethostname().split('.')[0]}"[:MAX_NAME]


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", text)
    if not m:
        raise ConfigError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 1920x1080")
    return int(m.group(1)), int(m.group(2))


def color_for(name: str) -> Color:
    """A stable, readable colour for a peer, derived from its name."""
    h = sum((i + 1) * ord(c) for i, c in enumerate(name)) % 360
    import colorsys

    r, g, b = colorsys.hls_to_rgb(h / 360.0, 0.45, 0.75)
    return (int(r * 255), int(g * 255), int(b * 255), 255)


@dataclass(frozen=True)
class Config:
    """Everything a peer needs to join a board. Every field has the command line's default."""

    group: str = DEFAULT_GROUP  #: IPv4 multicast group of the board
    port: int = DEFAULT_PORT  #: UDP port of the board
    iface: str | None = None  #: IPv4 address of the interface to use; None: the default one
    ttl: int = 1  #: multicast TTL; 1 keeps the board on the local network
    name: str = field(default_factory=default_name)  #: shown to the other peers
    color: Color | None = None  #: the peer's colour in peer lists; None: derived from name
    size: tuple[int, int] = DEFAULT_SIZE  #: canvas width, height
    rate: int = DEFAULT_RATE  #: most bytes per second sent (pacing adapts below it)
    #: the key of a passphrase board (seal.derive_key); None: an open board
    key: BoardKey | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        try:
            group = ipaddress.IPv4Address(self.group)
        except ValueError:
            raise ConfigError(f"group {self.group!r} is not an IPv4 address") from None
        if not group.is_multicast:
            raise ConfigError(f"group {self.group} is not a multicast address (224.0.0.0/4); "
                              "try one in 239.255.0.0/16")
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ConfigError(f"port {self.port!r} is not in 1..65535")
        if self.iface is not None:
            try:
                ipaddress.IPv4Address(self.iface)
            except ValueError:
                raise ConfigError(f"interface {self.iface!r} is not an IPv4 address "
                                  "(give the address of the interface, e.g. 192.168.1.20)") from None
        if not isinstance(self.ttl, int) or not 0 <= self.ttl <= 255:
            raise ConfigError(f"TTL {self.ttl!r} is not in 0..255")
        name = "".join(ch for ch in str(self.name) if ch.isprintable()).strip()
        if not name:
            raise ConfigError("name is empty")
        if len(name.encode("utf-8")) > 48:
            raise ConfigError(f"name {name!r} is longer than 48 bytes")
        object.__setattr__(self, "name", name)
        w, h = self.size
        if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
            raise ConfigError(f"size {w}x{h} is not between 1x1 and {MAX_SIDE}x{MAX_SIDE}")
        if not isinstance(self.rate, int) or not 10_000 <= self.rate <= 1_250_000_000:
            raise ConfigError(f"rate {self.rate!r} bytes/s is not in 10000..1250000000")
        if self.key is not None and (self.key.group, self.key.port) != (self.group, self.port):
            raise ConfigError("the passphrase key was derived for another board address")
        if self.color is None:
            object.__setattr__(self, "color", color_for(name))
        elif len(self.color) != 4 or not all(0 <= int(c) <= 255 for c in self.color):
            raise ConfigError(f"colour {self.color!r} is not RGBA in 0..255")
