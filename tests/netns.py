"""Network namespaces for the tests: nothing a test sends can leave the machine.

``scripts/test.sh`` runs the whole suite inside ``unshare -n`` with multicast routed on
``lo`` and sets ``P2PBOARD_IN_NETNS=1``. Tests that open a socket call :func:`require_netns`
first: outside such a namespace they skip with the reason, and under CI they fail, so
nothing is skipped there.

:class:`Lan` builds a simulated LAN inside that namespace: hosts as named namespaces
(``ip netns``), each with a veth to one bridge, addresses in 198.18.0.0/24, and helpers
for kernel packet loss and partitions with nftables (TESTBED.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest


def in_netns() -> bool:
    return os.environ.get("P2PBOARD_IN_NETNS") == "1"


def require_netns() -> None:
    if in_netns():
        return
    msg = "not inside a private network namespace (run scripts/test.sh)"
    if os.environ.get("CI"):
        pytest.fail(msg + ": under CI nothing may be skipped")
    pytest.skip(msg)


_lan_problem: list[str | None] = []  # cached result of _probe_lan()


def _probe_lan() -> str | None:
    """Why a :class:`Lan` cannot be built here, or None if it can."""
    missing = [t for t in ("ip", "nft") if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (Debian: iproute2, nftables)"
    if os.geteuid() != 0:
        return "named network namespaces (ip netns) need root"
    # Root inside `unshare -rn` is not real root: try the real thing once.
    name = f"pbprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True,
                       timeout=30)
    if r.returncode != 0:
        return f"ip netns is unusable here: {r.stderr.strip() or r.returncode}"
    try:
        r = subprocess.run(["ip", "netns", "exec", name, "nft", "list", "tables"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            return f"nft is unusable in a named namespace: {r.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
    return None


def require_lan() -> None:
    """Named namespaces need real root and the ip and nft tools."""
    require_netns()
    if not _lan_problem:
        _lan_problem.append(_probe_lan())
    reason = _lan_problem[0]
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason + ": under CI nothing may be skipped")
        pytest.skip(reason)


def sh(*argv: str, check: bool = True, input: str | None = None) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {r.stderr.strip()}")
    return r.stdout


class Lan:
    """``n`` hosts on one bridge. Use as a context manager; everything is deleted after."""

    def __init__(self, n: int, snooping: bool = False) -> None:
        """``snooping``: the bridge snoops IGMP and is the querier, with timers short enough
        for a test (membership lapses 8 s after a host's last report), like a switch."""
        self.n = n
        self.snooping = snooping
        self.tag = uuid.uuid4().hex[:6]
        self.bridge = f"pb{self.tag}"
        self.hosts = [f"pb{self.tag}h{i}" for i in range(n)]
        self.procs: list[subprocess.Popen] = []

    def addr(self, i: int) -> str:
        return f"198.18.0.{i + 1}"

    def __enter__(self) -> Lan:
        try:
            if self.snooping:  # centiseconds
                sh("ip", "link", "add", self.bridge, "type", "bridge", "mcast_snooping", "1",
                   "mcast_querier", "1", "mcast_query_interval", "300",
                   "mcast_query_response_interval", "100", "mcast_membership_interval", "800",
                   "mcast_startup_query_interval", "100", "mcast_querier_interval", "700")
            else:
                # No snooping: without a querier it would only add timing (MULTICAST-NOTES 9).
                sh("ip", "link", "add", self.bridge, "type", "bridge", "mcast_snooping", "0")
            sh("ip", "link", "set", self.bridge, "up")
            for i, host in enumerate(self.hosts):
                sh("ip", "netns", "add", host)
                veth, peer = f"pb{self.tag}v{i}", f"pb{self.tag}p{i}"
                sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
                sh("ip", "link", "set", veth, "netns", host)
                sh("ip", "link", "set", peer, "master", self.bridge, "up")
                self.exec(i, "ip", "link", "set", "lo", "up")
                self.exec(i, "ip", "addr", "add", f"{self.addr(i)}/24", "dev", veth)
                self.exec(i, "ip", "link", "set", veth, "up")
                self.exec(i, "ip", "route", "add", "224.0.0.0/4", "dev", veth)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass  # the namespace is deleted below all the same
        for host in self.hosts:
            sh("ip", "netns", "del", host, check=False)
        sh("ip", "link", "del", self.bridge, check=False)

    def exec(self, i: int, *argv: str) -> str:
        return sh("ip", "netns", "exec", self.hosts[i], *argv)

    def prefix(self, i: int) -> list[str]:
        """argv prefix that runs a command on host ``i``."""
        return ["ip", "netns", "exec", self.hosts[i]]

    def run(self, i: int, argv: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(self.prefix(i) + list(argv), **kw)
        self.procs.append(p)
        return p

    def _table(self, i: int) -> None:
        self.exec(i, "nft", "add", "table", "inet", "pbtest")
        for hook in ("input", "output"):
            self.exec(i, "nft", "add", "chain", "inet", "pbtest", hook,
                      f"{{ type filter hook {hook} priority 0; }}")

    def loss(self, i: int, percent: int, hook: str = "input") -> None:
        """Drop ``percent``% of the UDP datagrams host ``i`` receives (or sends)."""
        percent = int(percent)
        if not 0 <= percent <= 100:
            raise ValueError(f"loss of {percent}% is not in 0..100")
        if percent == 0:
            return
        self._table(i)
        # numgen's range is 0..99, so "< 100" is rejected: 100% is a plain drop rule
        chance = [] if percent == 100 else ["numgen", "random", "mod", "100", "<", str(percent)]
        self.exec(i, "nft", "add", "rule", "inet", "pbtest", hook, "meta", "l4proto", "udp",
                  *chance, "drop")

    def partition(self, side: list[int] | int, other: int | None = None) -> None:
        """Hosts in ``side`` and the others stop hearing each other; ``partition(i, j)``
        cuts only hosts ``i`` and ``j`` apart."""
        if isinstance(side, int):
            side = [side]
        others = ([j for j in range(self.n) if j not in side] if other is None else [other])
        for a, group in ((side, others), (others, side)):
            if not group:
                continue
            addrs = ", ".join(self.addr(j) for j in group)
            for i in a:
                self._table(i)
                self.exec(i, "nft", "add", "rule", "inet", "pbtest", "input", "ip", "saddr",
                          f"{{ {addrs} }}", "drop")

    def deafen_igmp(self, i: int) -> None:
        """Host ``i`` stops answering IGMP queries (they are dropped on the way in), so a
        snooping bridge forgets its membership: it no longer gets the group's traffic until
        it reports its membership again by itself (re-joining)."""
        self._table(i)
        self.exec(i, "nft", "add", "rule", "inet", "pbtest", "input", "ip", "protocol", "igmp",
                  "drop")

    def heal(self) -> None:
        """Remove every loss and partition rule."""
        for i in range(self.n):
            sh(*self.prefix(i), "nft", "delete", "table", "inet", "pbtest", check=False)
