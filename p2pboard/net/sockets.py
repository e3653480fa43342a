"""The one UDP multicast socket of a peer, set up to the known pitfalls on each platform.

* **Membership** is joined with the 8-byte ``ip_mreq`` (group, interface address), which
  every platform accepts; ``ip_mreqn`` exists only on Linux.
* **Interface**: with ``iface`` given, it is used both to join (``ip_mreq``) and to send
  (``IP_MULTICAST_IF``); otherwise the system's default multicast route decides both.
* **Binding**: on Linux and macOS the socket binds to the group address, so only that
  group's datagrams arrive; Windows cannot bind to a multicast address, so it binds to
  INADDR_ANY. On Linux ``IP_MULTICAST_ALL`` is turned off as well: without it a socket bound
  to a port receives every group joined by *any* socket on that port.
* **Reuse**: ``SO_REUSEADDR`` everywhere and ``SO_REUSEPORT`` where it exists (macOS and
  the BSDs need it for several peers on one port of one host; Linux has both).
* **Loop**: ``IP_MULTICAST_LOOP`` on, so peers on the same host hear each other (Windows
  applies it on the receiving side, the others on the sending side: every peer sets it).
  On Linux the edge turns it off while no other peer is on this host (edge.py).
* **TTL** 1 by default (the LAN only); BSD and macOS want it as one byte.
* **Buffers**: a large receive buffer is asked for and what the kernel granted is reported
  (Linux caps it at ``net.core.rmem_max`` and reports double the usable size).
* **Arrival times**: on Linux ``SO_TIMESTAMPNS`` makes the kernel stamp each datagram
  when it arrives; the edge reads it with ``recvmsg`` (elsewhere, or if refused, the edge
  stamps a datagram when it reads it).

Tested on Linux (CI, in network namespaces). The macOS and Windows branches follow their
documented behaviour and have not been run.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass

IS_WINDOWS = sys.platform.startswith("win")
IS_BSD = sys.platform == "darwin" or "bsd" in sys.platform
#: Linux's IP_MULTICAST_ALL (missing from older Python builds).
IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
#: Linux's SO_TIMESTAMPNS (asm-generic; not exported by Python's socket module).
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


class MulticastSetupError(OSError):
    """The socket could not be set up (no such interface, no multicast route ...)."""

    def __init__(self, message: str, interfaces: list[tuple[str, str]] | None = None,
                 errno: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: the errno of the failed system call, if there was one
        self.errno = errno
        #: (name, IPv4 address) of the interfaces one could pick instead
        self.interfaces = interfaces or []

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class SocketInfo:
    """What :func:`open_multicast_socket` set up, for logs and the UI's status line."""

    group: str  #: the multicast group joined
    port: int  #: the UDP port bound
    iface: str | None  #: address of the interface used; None: the system's default
    rcvbuf_requested: int  #: SO_RCVBUF asked for, in bytes
    rcvbuf_granted: int  #: SO_RCVBUF as getsockopt reports it (Linux: twice the usable size)
    sndbuf_granted: int  #: SO_SNDBUF as getsockopt reports it
    arrival_stamps: bool = False  #: the kernel stamps each datagram's arrival (Linux)


def arrival_stamps(sock: socket.socket) -> bool:
    """Ask the kernel to stamp each datagram's arrival (Linux); True if it will."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        return sock.getsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS) == 1
    except OSError:
        return False


def _check_group(group: str) -> None:
    try:
        addr = ipaddress.IPv4Address(group)
    except ValueError:
        raise ValueError(f"group {group!r} is not an IPv4 address") from None
    if not addr.is_multicast:
        raise ValueError(f"group {group} is not a multicast address (224.0.0.0/4)")


def open_multicast_socket(group: str, port: int, iface: str | None = None, *, ttl: int = 1,
                          rcvbuf: int = 8 << 20, sndbuf: int = 128 << 10,
                          loop: bool = True) -> tuple[socket.socket, SocketInfo]:
    """A non-blocking UDP socket joined to ``group`` on ``port``, sending to it via
    ``iface`` (an interface's IPv4 address; None for the default).

    The send buffer is small on purpose (about 100 full datagrams): when the pacer runs
    faster than the link, the socket says so (EAGAIN) before the interface's queue fills,
    which would drop datagrams without a word (Linux reports UDP qdisc drops only with
    IP_RECVERR)."""
    _check_group(group)
    if iface is not None:
        try:
            ipaddress.IPv4Address(iface)
        except ValueError:
            raise ValueError(f"iface {iface!r} is not an IPv4 address (give the address of "
                             "the interface, not its name)") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not in 1..65535")
    sock = None
    step = "create a UDP socket"
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        step = "allow several peers on one port"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT") and not IS_WINDOWS:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        step = "set the buffer sizes"
        for opt, size in ((socket.SO_RCVBUF, rcvbuf), (socket.SO_SNDBUF, sndbuf)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, size)
            except OSError:
                pass  # keep the default; reported below
        step = f"bind to port {port}"
        sock.bind(("" if IS_WINDOWS else group, port))
        if sys.platform.startswith("linux"):
            step = "turn off IP_MULTICAST_ALL"
            sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        step = "join"
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _mreq(group, iface))
        if iface is not None:
            step = f"send through {iface}"
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
        step = "set the TTL and loop"
        if IS_BSD:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, struct.pack("B", ttl))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP,
                            struct.pack("B", int(loop)))
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(loop))
        sock.setblocking(False)
        info = SocketInfo(group, port, iface, rcvbuf,
                          sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                          sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                          arrival_stamps(sock))
    except OSError as err:
        if sock is not None:
            sock.close()
        names = list_ipv4_interfaces()
        hint = ""
        if names:
            hint = "; interfaces: " + ", ".join(f"{n} {a}" for n, a in names)
        where = iface or "the default interface"
        raise MulticastSetupError(
            f"cannot join the board {group}:{port} on {where}: "
            f"{_explain(step, err, iface, port)}{hint}", names, err.errno) from err
    return sock, info


def _explain(step: str, err: OSError, iface: str | None, port: int) -> str:
    """What a failed setup step means, in words a user can act on."""
    code = err.errno
    if step == "join" and code in (errno.ENODEV, errno.EADDRNOTAVAIL):
        if iface is None:
            return ("no network connection can carry multicast here (no network, or no "
                    "route for multicast): connect to a network or choose an interface")
        return f"no interface of this machine has the address {iface}"
    if code == errno.EADDRINUSE:
        return f"port {port} is taken by a program that does not share it"
    if code in (errno.EACCES, errno.EPERM):
        return f"not allowed to {step} (a firewall or a privileged port?)"
    return f"could not {step}: {err.strerror or err}"


def _mreq(group: str, iface: str | None) -> bytes:
    # ip_mreq: 8 bytes (group, interface address); the common "4sl" recipe is 16 bytes
    # on 64-bit Linux and joins on the wrong interface.
    return struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(iface or "0.0.0.0"))


def rejoin_group(sock: socket.socket, group: str, iface: str | None) -> None:
    """Leave and join ``group`` again, which sends a fresh IGMP membership report: a switch
    that snoops IGMP and has dropped us (no querier on the LAN) forwards the group again.
    Raises OSError if the join fails (the interface went away)."""
    mreq = _mreq(group, iface)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, mreq)
    except OSError:
        pass  # not a member any more (interface down and up): joining is what matters
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)


def list_ipv4_interfaces() -> list[tuple[str, str]]:
    """(name, address) of this machine's IPv4 interfaces, best effort; never raises."""
    try:
        if sys.platform.startswith("linux"):
            if shutil.which("ip"):
                out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True,
                                     text=True, timeout=5).stdout
                found = re.findall(r"^\d+:\s+(\S+)\s+inet\s+([\d.]+)/", out, re.M)
                if found:
                    return [(n, a) for n, a in found]
            return _linux_ioctl_interfaces()
        host = socket.gethostname()
        addrs = {ai[4][0] for ai in socket.getaddrinfo(host, None, socket.AF_INET)}
        return [(host, a) for a in sorted(addrs)] + [("loopback", "127.0.0.1")]
    except Exception:  # noqa: BLE001 - a listing for an error message must not fail
        return []


def _linux_ioctl_interfaces() -> list[tuple[str, str]]:
    import fcntl

    siocgifaddr = 0x8915
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                req = struct.pack("256s", name.encode()[:15])
                res = fcntl.ioctl(s.fileno(), siocgifaddr, req)
                out.append((name, socket.inet_ntoa(res[20:24])))
            except OSError:
                continue
    return out


def socket_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped for this socket (full buffer), on Linux; else None."""
    try:
        inode = os.fstat(sock.fileno()).st_ino
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) >= 13 and int(parts[9]) == inode:
                    return int(parts[12])
    except Exception:  # noqa: BLE001 - a statistic must never break the receive path
        return None
    return None
