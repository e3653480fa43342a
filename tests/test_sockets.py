"""The multicast socket set up by p2pboard.net.sockets, on real sockets.

Everything that opens a socket runs only inside the private network namespace made by
scripts/test.sh, where multicast is routed on ``lo`` and nothing can leave the machine.
"""

from __future__ import annotations

import dataclasses
import select
import socket
import sys
import time

import pytest

from p2pboard.net import sockets
from p2pboard.net.sockets import (
    MulticastSetupError,
    SocketInfo,
    list_ipv4_interfaces,
    open_multicast_socket,
    socket_drops,
)

from .netns import require_netns

GROUP = "239.255.77.1"
OTHER_GROUP = "239.255.77.2"
LINUX = sys.platform.startswith("linux")


@pytest.fixture
def netns():
    require_netns()


@pytest.fixture
def opened():
    """Open sockets through this; all are closed after the test."""
    socks: list[socket.socket] = []

    def open_(*args, **kw):
        sock, info = open_multicast_socket(*args, **kw)
        socks.append(sock)
        return sock, info

    yield open_
    for s in socks:
        s.close()


def recv_within(sock: socket.socket, timeout: float) -> bytes | None:
    """The next datagram on a non-blocking socket, or None if none comes in time."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([sock], [], [], left)
        if ready:
            try:
                return sock.recv(65536)
            except BlockingIOError:
                continue


@pytest.mark.parametrize("iface", ["127.0.0.1", None])
def test_two_peers_on_one_port_both_hear_a_datagram(netns, opened, iface):
    a, _ = opened(GROUP, 47101, iface)
    b, _ = opened(GROUP, 47101, iface)
    a.sendto(b"hello from a", (GROUP, 47101))
    assert recv_within(b, 5) == b"hello from a"
    # IP_MULTICAST_LOOP: the sender hears itself too, as every other peer on the host does
    assert recv_within(a, 5) == b"hello from a"


def test_a_socket_on_another_group_gets_nothing(netns, opened):
    a, _ = opened(GROUP, 47102, "127.0.0.1")
    b, _ = opened(GROUP, 47102, "127.0.0.1")
    other, _ = opened(OTHER_GROUP, 47102, "127.0.0.1")
    a.sendto(b"for GROUP only", (GROUP, 47102))
    assert recv_within(b, 5) == b"for GROUP only"  # it was delivered ...
    assert recv_within(other, 0.3) is None  # ... but not to the other group's socket
    other_sender, _ = opened(OTHER_GROUP, 47102, "127.0.0.1")
    other_sender.sendto(b"for OTHER", (OTHER_GROUP, 47102))
    assert recv_within(other, 5) == b"for OTHER"
    assert recv_within(b, 0.3) is None


@pytest.mark.skipif(not LINUX, reason="IP_MULTICAST_ALL exists only on Linux")
def test_multicast_all_is_off(netns, opened):
    sock, _ = opened(GROUP, 47103)
    assert sock.getsockopt(socket.IPPROTO_IP, sockets.IP_MULTICAST_ALL) == 0


def test_socket_is_nonblocking_with_the_requested_options(netns, opened):
    sock, info = opened(GROUP, 47104, "127.0.0.1", ttl=1, rcvbuf=1 << 20)
    assert sock.getblocking() is False
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
    assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 1
    assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 1
    assert socket.inet_ntoa(
        sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4)) == "127.0.0.1"
    if not sys.platform.startswith("win"):
        assert sock.getsockname() == (GROUP, 47104)  # bound to the group, not to any address


def test_socket_info_reports_what_the_kernel_granted(netns, opened):
    sock, info = opened(GROUP, 47105, rcvbuf=4 << 20)
    assert isinstance(info, SocketInfo)
    assert (info.group, info.port, info.iface) == (GROUP, 47105, None)
    assert info.rcvbuf_requested == 4 << 20
    assert info.rcvbuf_granted > 0
    assert info.sndbuf_granted > 0
    assert info.rcvbuf_granted == sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.port = 1  # type: ignore[misc]


@pytest.mark.parametrize("group", ["10.0.0.1", "127.0.0.1", "not-an-address", "239.255.0.300",
                                   "ff02::1", ""])
def test_a_bad_group_is_a_value_error(group):
    # Validation comes before any socket is opened, so this runs anywhere.
    with pytest.raises(ValueError, match="group"):
        open_multicast_socket(group, 47106)


def test_an_interface_name_instead_of_an_address_is_a_value_error():
    with pytest.raises(ValueError, match="not an IPv4 address"):
        open_multicast_socket(GROUP, 47106, "eth0")


def test_a_missing_interface_address_is_a_setup_error_naming_the_choices(netns):
    with pytest.raises(MulticastSetupError) as caught:
        open_multicast_socket(GROUP, 47107, "198.18.99.99")  # no interface has it
    err = caught.value
    assert isinstance(err, OSError)
    message = str(err)
    assert GROUP in message and "47107" in message and "198.18.99.99" in message
    assert err.errno is not None
    assert ("lo", "127.0.0.1") in err.interfaces
    assert "lo 127.0.0.1" in message  # the user is told what to pick instead


def test_list_ipv4_interfaces_finds_loopback(netns):
    assert ("lo", "127.0.0.1") in list_ipv4_interfaces()


@pytest.mark.skipif(not LINUX, reason="the ioctl fallback is Linux only")
def test_ioctl_fallback_agrees_with_ip(netns, monkeypatch):
    via_ip = list_ipv4_interfaces()
    monkeypatch.setattr(sockets.shutil, "which", lambda name: None)
    via_ioctl = list_ipv4_interfaces()
    assert ("lo", "127.0.0.1") in via_ioctl
    assert set(via_ioctl) <= set(via_ip)


@pytest.mark.skipif(not LINUX, reason="/proc/net/udp is Linux only")
def test_socket_drops_counts_kernel_drops(netns, opened):
    sock, info = opened(GROUP, 47108, rcvbuf=4096)  # the kernel's minimum, a few datagrams
    assert socket_drops(sock) == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(300):
            sender.sendto(b"x" * 1200, (GROUP, 47108))
    # the receiver never read: most of the 300 datagrams found its buffer full
    drops = socket_drops(sock)
    assert isinstance(drops, int) and drops > 0


def test_socket_drops_never_raises(netns):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        pass
    assert socket_drops(s) is None  # closed: no descriptor, no answer


def test_setup_error_closes_the_socket(netns, monkeypatch):
    closed = []
    real_socket = socket.socket

    class Spy(real_socket):
        def close(self):
            closed.append(True)
            super().close()

    monkeypatch.setattr(sockets.socket, "socket", Spy)
    with pytest.raises(MulticastSetupError):
        open_multicast_socket(GROUP, 47109, "198.18.99.99")
    assert closed == [True]


def test_the_edge_hands_the_engine_each_datagrams_arrival_time_not_its_read_time(netns, opened):
    """A datagram that waited 0.2 s in the kernel (the loop was busy) is stamped with
    when it arrived: the engine's repair delays and round trips are the network's."""
    import asyncio

    from p2pboard.config import Config
    from p2pboard.net.edge import Edge
    from p2pboard.session import Engine

    sock, info = opened(GROUP, 47111, "127.0.0.1")
    assert info.arrival_stamps
    tx, _ = opened(GROUP, 47111, "127.0.0.1")

    async def main():
        loop = asyncio.get_running_loop()
        edge = Edge(Engine(Config(size=(64, 48)), peer_id=1), sock, (GROUP, 47111), loop)
        assert edge.stamped
        sent_at = loop.time()
        tx.sendto(b"not a p2pboard datagram", (GROUP, 47111))
        assert select.select([sock], [], [], 5.0)[0], "the datagram did not arrive"
        seen_at = loop.time()
        time.sleep(0.2)  # the loop is busy elsewhere: the datagram waits in the kernel
        edge._drain()
        read_at = loop.time()
        (_, _, at, noted), = list(edge._queue)
        assert noted is False  # not a p2pboard datagram
        assert sent_at - 0.01 <= at <= seen_at < read_at - 0.15, (sent_at, at, seen_at, read_at)

    asyncio.run(main())
