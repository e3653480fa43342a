"""A simulated LAN in network namespaces, without pytest: used by the tests (through
tests/netns.py) and by scripts/bench.py.

:class:`Lan` puts ``n`` hosts on one bridge: each host is a named network namespace
(``ip netns``) with a veth to the bridge, an address in 198.18.0.0/24 and multicast routed
on that veth (TESTBED.md). Helpers add kernel packet loss and partitions with nftables,
and a real link rate in both directions with the token bucket filter
(:meth:`Lan.shape`). The bridge lives in the namespace of the caller, which must itself
be a private one (``unshare -n``): nothing a host sends can leave the machine.

Needs real root and the ``ip``, ``nft`` and ``tc`` tools; :func:`lan_problem` says why a
Lan cannot be built here, or None.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid


def sh(*argv: str, check: bool = True, input: str | None = None) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {r.stderr.strip()}")
    return r.stdout


def lan_problem() -> str | None:
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

    def host_if(self, i: int) -> str:
        """Host ``i``'s interface (inside its namespace)."""
        return f"pb{self.tag}v{i}"

    def bridge_if(self, i: int) -> str:
        """The bridge's port towards host ``i`` (in the caller's namespace)."""
        return f"pb{self.tag}p{i}"

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
                veth, peer = self.host_if(i), self.bridge_if(i)
                sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
                sh("ip", "link", "set", veth, "netns", host)
                sh("ip", "link", "set", peer, "master", self.bridge, "up")
                self.exec(i, "ip", "link", "set", "lo", "up")
                # IPv4 only: no IPv6 router solicitations or MLD reports on the links, so
                # what the links carry is what the programs under test send.
                self.exec(i, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
                self.exec(i, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
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

    # -------------------------------------------------------------- link rate

    def shape(self, rate: str | None, burst: str = "32kbit", latency: str = "20ms") -> None:
        """Give every host's link ``rate`` (tc syntax, e.g. "100mbit") in both directions
        with the token bucket filter: on the host's veth (its uplink) and on the bridge's
        port towards it (its downlink), like a switched LAN. None removes the limit."""
        for i in range(self.n):
            for where, dev in ((self.prefix(i), self.host_if(i)), ([], self.bridge_if(i))):
                if rate is None:
                    sh(*where, "tc", "qdisc", "del", "dev", dev, "root", check=False)
                else:
                    sh(*where, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
                       rate, "burst", burst, "latency", latency)

    def link_counters(self, i: int) -> tuple[int, int]:
        """(bytes, packets) host ``i`` has sent on its link, Ethernet headers included."""
        out = self.exec(i, "cat", f"/sys/class/net/{self.host_if(i)}/statistics/tx_bytes",
                        f"/sys/class/net/{self.host_if(i)}/statistics/tx_packets").split()
        return int(out[0]), int(out[1])

    # -------------------------------------------------------------- faults

    def _table(self, i: int) -> None:
        self.exec(i, "nft", "add", "table", "inet", "pbtest")
        for hook in ("input", "output"):
            self.exec(i, "nft", "add", "chain", "inet", "pbtest", hook,
                      f"{{ type filter hook {hook} priority 0; }}")

    def loss(self, i: int, percent: float, hook: str = "input", proto: str | None = "udp") -> None:
        """Drop ``percent``% of the UDP datagrams (``proto=None``: of all IP packets) host
        ``i`` receives (or sends, with ``hook="output"``)."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss of {percent}% is not in 0..100")
        if percent == 0:
            return
        self._table(i)
        # numgen's range is 0..N-1, so "< N" is rejected: 100% is a plain drop rule.
        # Per mille, so that fractions such as 1.5% work too.
        per_mille = int(round(percent * 10))
        chance = ([] if per_mille >= 1000 else
                  ["numgen", "random", "mod", "1000", "<", str(per_mille)])
        match = ["meta", "l4proto", proto] if proto else ["meta", "nfproto", "ipv4"]
        self.exec(i, "nft", "add", "rule", "inet", "pbtest", hook, *match, *chance, "drop")

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
