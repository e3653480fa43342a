"""The simulated LAN of tests/netns.py works before anything is built on it: hosts on one
bridge hear each other's multicast, and nftables loss and partitions really drop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .netns import Lan, require_lan, sh

GROUP = "239.255.78.1"
PORT = 47201
ROOT = Path(__file__).resolve().parent.parent

# Receiver: join on the given interface, say "ready", then count datagrams until `want`
# have arrived or `quiet` seconds pass with none; print the count.
RECEIVER = """
import select, sys
from p2pboard.net.sockets import open_multicast_socket
group, port, iface = sys.argv[1], int(sys.argv[2]), sys.argv[3]
want, quiet = int(sys.argv[4]), float(sys.argv[5])
sock, _ = open_multicast_socket(group, port, iface)
print("ready", flush=True)
got = 0
while got < want and select.select([sock], [], [], quiet)[0]:
    sock.recv(65536)
    got += 1
print(got, flush=True)
"""

# Sender: send `count` datagrams through the given interface.
SENDER = """
import sys, time
from p2pboard.net.sockets import open_multicast_socket
group, port, iface, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
sock, _ = open_multicast_socket(group, port, iface)
for i in range(count):
    sock.sendto(b"datagram %d" % i, (group, port))
    time.sleep(0.002)
"""


@pytest.fixture
def lan():
    require_lan()
    with Lan(2) as lan:
        yield lan


def send_and_count(lan: Lan, count: int, quiet: float) -> int:
    """Host 1 listens while host 0 sends ``count`` datagrams; how many arrived at host 1."""
    kw = dict(cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rx = lan.run(1, [sys.executable, "-c", RECEIVER, GROUP, str(PORT), lan.addr(1),
                     str(count), str(quiet)], **kw)
    assert rx.stdout.readline().strip() == "ready", rx.stderr.read()
    tx = lan.run(0, [sys.executable, "-c", SENDER, GROUP, str(PORT), lan.addr(0), str(count)],
                 **kw)
    _, err = tx.communicate(timeout=60)
    assert tx.returncode == 0, err
    out, err = rx.communicate(timeout=60)
    assert rx.returncode == 0, err
    return int(out.strip())


def test_two_hosts_exchange_multicast_over_the_bridge(lan):
    assert send_and_count(lan, 20, quiet=5) == 20


def test_full_loss_at_a_host_drops_everything(lan):
    lan.loss(1, 100)
    assert send_and_count(lan, 20, quiet=1) == 0
    lan.heal()
    assert send_and_count(lan, 20, quiet=5) == 20


def test_partial_loss_drops_some(lan):
    lan.loss(1, 50)
    got = send_and_count(lan, 200, quiet=1)
    assert 40 < got < 160  # binomial(200, 0.5): far outside these bounds is a broken rule


def test_partition_then_heal(lan):
    lan.partition(0, 1)
    assert send_and_count(lan, 20, quiet=1) == 0
    lan.heal()
    assert send_and_count(lan, 20, quiet=5) == 20


def test_hosts_have_their_own_addresses(lan):
    for i in range(2):
        out = lan.exec(i, "ip", "-o", "-4", "addr", "show")
        assert f"{lan.addr(i)}/24" in out
        assert "127.0.0.1/8" in out
        routes = lan.exec(i, "ip", "route", "show", "table", "all")
        assert "224.0.0.0/4" in routes


def test_everything_is_deleted_even_after_an_error():
    require_lan()
    with pytest.raises(RuntimeError, match="boom"):
        with Lan(2) as lan:
            hosts, bridge = list(lan.hosts), lan.bridge
            proc = lan.run(0, ["sleep", "600"])
            raise RuntimeError("boom")
    assert proc.poll() is not None
    names = sh("ip", "netns", "list")
    assert not any(h in names for h in hosts)
    assert sh("ip", "link", "show", bridge, check=False) == ""
