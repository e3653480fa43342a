#!/usr/bin/env python3
"""Soak test: N peers on a simulated LAN drawing for a long time under churn and loss.

    scripts/soak.py --peers 6 --minutes 10 --write      # the run in docs/RELIABILITY.md
    scripts/soak.py --quick                             # the CI version, about 40 s

Every host of a :class:`tests.netns.Lan` (named network namespaces on one bridge, nothing
can leave the machine) runs one ``scripts/soakpeer.py`` at a time. All peers draw
continuously at mouse rate (strokes with random widths and colours, sometimes undo, redo,
a pasted image or a clear). Meanwhile a seeded schedule

* kills a peer with SIGKILL (mid-stroke) and restarts it a few seconds later, on the same
  host with the same data directory (autosave, once the API has it),
* makes a peer leave gracefully and come back,
* starts the last host late (a late joiner needs the whole board),
* draws every host's kernel input loss (nftables) anew in 5..20 % every 10..20 s,
* cuts the LAN in two for a few seconds now and then, and heals it.

A progress bar on stderr shows elapsed time, live peers, current loss and memory. At the
end the churn stops, loss and partitions are removed, every host gets a peer again, all
stop drawing and wait until synced; each saves its raw pixels and the script counts the
pixels that differ from the majority board (divergent pixels, must be 0; boards that
still differ once all are synced get 20 s for anti-entropy to mend them, and the report
says how many there were and how long it took) and the gaps never filled
(``unrecoverable`` plus anything still missing, must be 0, except datagrams lost with a
killed author: skipped after its kill -9 while no live peer said it held them, listed but
not failed, since nothing can recover what nobody received; the skips of a peer killed
later count too, from its last sample, since what it served meanwhile passed the gap on).
Memory (VmRSS of every peer process, sampled every second) is reported per peer over
time, and every live peer's counters every 5 s (so a killed peer's last counters are
kept). Exit status 1 if a board diverges, another gap stays unrecovered, a peer does not
sync, a snapshot is refused or a restarted peer cannot read its own saved board (every
peer here is honest, so either is a bug); 2 for a setup problem.

Needs root. Without ``P2PBOARD_IN_NETNS=1`` the script re-runs itself inside ``unshare -n
-m`` (a private network and a private /run/netns), so even the bridge dies with the run.
The schedule is seeded, but which peer is hit depends on which are up at that moment, so
two runs with one seed are alike, not identical; the fault log in the output and in
``--json`` says exactly what happened when.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import queue
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DOC = ROOT / "docs" / "RELIABILITY.md"
PLOT = ROOT / "docs" / "soak-memory.png"
BEGIN, END = "<!-- soak-results:begin -->", "<!-- soak-results:end -->"
#: seconds between samples of every live peer's counters (kept for the killed ones)
SAMPLE_STATS = 5.0
#: seconds anti-entropy is given, after every peer is synced, to make differing boards agree
AE_WAIT = 20.0
#: what an author's counters say of the NACKs it was sent (see PROTOCOL.md, Counters)
AUTHOR_KEYS = ("nacks_received", "repairs_sent", "repairs_held_down", "repairs_refused",
               "nacks_uncached", "repairs_queue_full", "rejected_nack", "parity_sent",
               "snapshots_sent", "snap_nacks_unknown")
STAT_KEYS = ("data_sent", "data_received", "gaps", "recovered", "nacks_sent",
             "nacks_suppressed", "repairs_sent", "repairs_received", "repairs_held_down",
             "repairs_refused", "nacks_uncached", "repairs_queue_full", "snap_nacks_unknown",
             "duplicates", "snapshots_sent", "snapshots_built", "snapshot_chunks_sent",
             "snapshot_chunks_resent", "snapshots_received", "snap_requests_sent",
             "gap_fetches", "snap_offers_to_anyone", "snap_offers_repeated",
             "snap_offers_crossed", "snap_offers_declined", "snapshot_chunks_withdrawn",
             "snapshot_builds_skipped", "sessions_sent", "divergences", "unrecoverable",
             "missing", "behind", "send_errors", "board_rejected", "board_forced_folds")


class SetupError(RuntimeError):
    pass


class PeerError(RuntimeError):
    pass


# ---------------------------------------------------------------------------- namespaces


def ensure_private_netns(argv: list[str]) -> None:
    """Re-execute inside a private network and mount namespace unless already in one."""
    if os.environ.get("P2PBOARD_IN_NETNS") == "1":
        return
    if os.geteuid() != 0:
        raise SetupError("needs root (named network namespaces; see docs/TESTBED.md)")
    if shutil.which("unshare") is None:
        raise SetupError("unshare (util-linux) is missing")
    inner = ("set -e; ip link set lo up; mkdir -p /run/netns; "
             "mount -t tmpfs -o mode=0755 p2pboard-soak /run/netns; "
             "export P2PBOARD_IN_NETNS=1; exec \"$0\" \"$@\"")
    os.execvp("unshare", ["unshare", "-n", "-m", "--", "bash", "-c", inner, sys.executable,
                          str(Path(__file__).resolve()), *argv])


# ---------------------------------------------------------------------------- peers


@dataclass
class PeerProc:
    """One scripts/soakpeer.py process on one host."""

    host: int
    gen: int
    proc: subprocess.Popen
    started: float
    lines: queue.Queue = field(default_factory=queue.Queue)
    id: int = 0
    ready_at: float | None = None
    pid_ok: bool | None = None
    autosave: bool = False
    rss: list[tuple[float, int]] = field(default_factory=list)  # (t, kB)
    cpu_ticks: int = 0
    ended: str = ""  # how it ended: killed, left, final
    ended_at: float = 0.0
    skips: list = field(default_factory=list)  # gaps it skipped (Engine.skips)
    stats: dict | None = None
    drawn: dict = field(default_factory=dict)  # what its scribbler did (final peers)
    pen_down: bool = False  # in the middle of a stroke (from its pen events)
    mem: dict = field(default_factory=dict)  # where its memory goes (final peers)
    #: its counters and skips as last sampled (every SAMPLE_STATS s): what is left of a
    #: killed peer's
    last_stats: dict | None = None
    last_stats_at: float = 0.0
    #: what went wrong with its saved board at start (the API's autosave_problem)
    autosave_problem: str | None = None

    @property
    def label(self) -> str:
        return f"h{self.host}.{self.gen}"

    def start_reader(self) -> None:
        def pump():
            for line in self.proc.stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    msg = {"event": "garbage", "line": line}
                if msg.get("event") == "pen":
                    self.pen_down = msg["down"]
                elif msg.get("event") == "stats" and msg.get("tag") == "sample":
                    self.last_stats, self.last_stats_at = msg, time.monotonic()
                else:
                    self.lines.put(msg)
            self.lines.put(None)
        threading.Thread(target=pump, daemon=True).start()

    def send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as err:
            raise PeerError(f"{self.label}: cannot send {line!r}: {err}") from None

    def poll(self, event: str) -> dict | None:
        """The next message of this kind if one is waiting (others are dropped)."""
        while True:
            try:
                msg = self.lines.get_nowait()
            except queue.Empty:
                return None
            if msg is None:
                self.lines.put(None)
                raise PeerError(f"{self.label} exited (status {self.proc.poll()})")
            if msg.get("event") == event:
                return msg

    def expect(self, event: str, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise PeerError(f"{self.label}: no {event!r} within {timeout:.0f} s")
            try:
                msg = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if msg is None:
                self.lines.put(None)
                raise PeerError(f"{self.label} exited (status {self.proc.poll()}) waiting "
                                f"for {event!r}")
            if msg.get("event") == event:
                return msg

    def alive(self) -> bool:
        return self.proc.poll() is None

    def sample(self, t: float) -> None:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        if m and self.ready_at is not None:
            self.rss.append((t, int(m.group(1))))
        fields = stat.rsplit(")", 1)[1].split()
        self.cpu_ticks = int(fields[11]) + int(fields[12])  # utime + stime


def verify_pid(p: PeerProc, reported: int) -> bool:
    """``ip netns exec`` execs the command, so the Popen pid is the Python process itself."""
    try:
        cmdline = Path(f"/proc/{p.proc.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return reported == p.proc.pid and any(a.endswith(b"soakpeer.py") for a in cmdline)


# ---------------------------------------------------------------------------- the run


@dataclass
class Plan:
    peers: int
    seconds: float
    seed: int
    size: str
    quick: bool
    loss_lo: int = 5
    loss_hi: int = 20
    loss_every: tuple[float, float] = (10.0, 20.0)
    fault_every: tuple[float, float] = (15.0, 35.0)
    kill_down: tuple[float, float] = (2.0, 5.0)
    leave_down: tuple[float, float] = (3.0, 8.0)
    cut_for: tuple[float, float] = (3.0, 6.0)
    late_at: float = 0.3  # share of the run after which the last host starts


class Soak:
    def __init__(self, plan: Plan, lan, workdir: Path, log) -> None:
        self.plan = plan
        self.lan = lan
        self.work = workdir
        self.log = log
        self.rng = random.Random(plan.seed)
        self.t0 = time.monotonic()
        self.port = 40000 + self.rng.randrange(20000)
        self.group = f"239.255.{self.rng.randrange(1, 255)}.{self.rng.randrange(1, 255)}"
        self.current: dict[int, PeerProc | None] = {i: None for i in range(plan.peers)}
        self.all: list[PeerProc] = []
        self.gens = {i: 0 for i in range(plan.peers)}
        self.restart_at: dict[int, float] = {}
        self.leaving: list[PeerProc] = []
        self.loss = {i: 0 for i in range(plan.peers)}
        self.cut: list[int] | None = None
        self.cut_until = 0.0
        self.events: list[tuple[float, str]] = []
        self.fault_counts = {"kill": 0, "leave": 0, "partition": 0, "late_join": 0,
                             "loss_change": 0, "restart": 0}
        self.errors: list[str] = []
        self._bag: list[str] = []
        self.loadavg: list[float] = []  # the machine's 1-minute load, every second

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, text: str) -> None:
        self.events.append((round(self.now(), 1), text))

    # -- hosts

    def start_peer(self, i: int) -> PeerProc:
        self.gens[i] += 1
        gen = self.gens[i]
        data_dir = self.work / f"data-h{i}"
        data_dir.mkdir(exist_ok=True)
        argv = [sys.executable, str(ROOT / "scripts" / "soakpeer.py"), "--group", self.group,
                "--port", str(self.port), "--iface", self.lan.addr(i), "--name", f"h{i}.{gen}",
                "--size", self.plan.size, "--data-dir", str(data_dir)]
        err = open(self.work / f"h{i}.{gen}.stderr", "w")
        proc = self.lan.run(i, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                            text=True, bufsize=1, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
        err.close()
        p = PeerProc(i, gen, proc, self.now())
        p.start_reader()
        self.current[i] = p
        self.all.append(p)
        return p

    def poll_ready(self, p: PeerProc) -> None:
        if p.ready_at is not None:
            return
        msg = p.poll("ready")
        if msg is None:
            if self.now() - p.started > 90:
                raise PeerError(f"{p.label} not ready after 90 s")
            return
        p.id, p.autosave = msg["id"], msg["autosave"]
        p.autosave_problem = msg.get("autosave_problem")
        if p.autosave_problem:
            self.note(f"{p.label} set its saved board aside: {p.autosave_problem}")
        p.pid_ok = verify_pid(p, msg["pid"])
        p.ready_at = self.now()
        p.send(f"scribble {self.plan.seed * 1000 + p.host * 100 + p.gen}")

    def up(self) -> list[int]:
        return [i for i, p in self.current.items() if p is not None and p.ready_at is not None]

    def kill(self, i: int) -> None:
        p = self.current[i]
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait()
        p.ended, p.ended_at = "killed", self.now()
        self.current[i] = None
        self.restart_at[i] = self.now() + self.rng.uniform(*self.plan.kill_down)
        self.fault_counts["kill"] += 1
        self.note(f"kill -9 {p.label} (mid-stroke); restart in "
                  f"{self.restart_at[i] - self.now():.1f} s")

    def leave(self, i: int) -> None:
        p = self.current[i]
        try:
            p.send("stats")
            p.send("quit")
        except PeerError:
            pass
        p.ended, p.ended_at = "left", self.now()
        self.leaving.append(p)
        self.current[i] = None
        self.restart_at[i] = self.now() + self.rng.uniform(*self.plan.leave_down)
        self.fault_counts["leave"] += 1
        self.note(f"{p.label} leaves (goodbye); back in {self.restart_at[i] - self.now():.1f} s")

    def reap_leavers(self, wait: bool = False) -> None:
        for p in list(self.leaving):
            if wait:
                try:
                    p.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.proc.kill()
            if p.proc.poll() is None:
                continue
            self.leaving.remove(p)
            while True:
                try:
                    msg = p.lines.get_nowait()
                except queue.Empty:
                    break
                if msg and msg.get("event") == "stats":
                    p.stats = msg["stats"]
                    p.skips = msg.get("skips", [])

    # -- network faults

    def set_loss(self, i: int, percent: int) -> None:
        self.lan.exec(i, "nft", "add", "table", "inet", "soakloss")  # idempotent
        self.lan.exec(i, "nft", "delete", "table", "inet", "soakloss")
        self.loss[i] = percent
        if percent:
            self.lan.exec(i, "nft", "add", "table", "inet", "soakloss")
            self.lan.exec(i, "nft", "add", "chain", "inet", "soakloss", "input",
                          "{ type filter hook input priority 0; }")
            self.lan.exec(i, "nft", "add", "rule", "inet", "soakloss", "input", "meta",
                          "l4proto", "udp", "numgen", "random", "mod", "100", "<",
                          str(percent), "drop")

    def partition(self, side: list[int]) -> None:
        n = self.plan.peers
        other = [j for j in range(n) if j not in side]
        for a, b in ((side, other), (other, side)):
            addrs = ", ".join(self.lan.addr(j) for j in b)
            for i in a:
                self.lan.exec(i, "nft", "add", "table", "inet", "soakcut")
                self.lan.exec(i, "nft", "add", "chain", "inet", "soakcut", "input",
                              "{ type filter hook input priority 0; }")
                self.lan.exec(i, "nft", "add", "rule", "inet", "soakcut", "input", "ip",
                              "saddr", f"{{ {addrs} }}", "drop")
        self.cut = side
        self.fault_counts["partition"] += 1

    def heal(self) -> None:
        for i in range(self.plan.peers):
            self.lan.exec(i, "nft", "add", "table", "inet", "soakcut")
            self.lan.exec(i, "nft", "delete", "table", "inet", "soakcut")
        self.cut = None

    # -- the main loop

    def run(self, progress) -> None:
        plan, rng = self.plan, self.rng
        n = plan.peers
        late = n - 1 if n >= 3 else None
        for i in range(n):
            if i != late:
                self.start_peer(i)
        late_at = plan.seconds * plan.late_at
        next_loss = {i: rng.uniform(0, 3) for i in range(n)}
        next_fault = rng.uniform(*plan.fault_every) * (0.5 if plan.quick else 1.0)
        next_sample = next_stats = 0.0
        while (t := self.now()) < plan.seconds:
            for i, p in self.current.items():
                if p is not None:
                    if not p.alive():
                        raise PeerError(f"{p.label} died by itself (status {p.proc.poll()}); "
                                        f"see {self.work}/{p.label}.stderr")
                    self.poll_ready(p)
            self.reap_leavers()
            if late is not None and t >= late_at and self.gens[late] == 0:
                self.start_peer(late)
                self.fault_counts["late_join"] += 1
                self.note(f"h{late} joins late")
            for i, at in list(self.restart_at.items()):
                if t >= at:
                    del self.restart_at[i]
                    p = self.start_peer(i)
                    self.fault_counts["restart"] += 1
                    self.note(f"restart h{i} as {p.label} (same data dir)")
            for i in range(n):
                if t >= next_loss[i]:
                    pct = rng.randint(plan.loss_lo, plan.loss_hi)
                    self.set_loss(i, pct)
                    self.fault_counts["loss_change"] += 1
                    next_loss[i] = t + rng.uniform(*plan.loss_every)
            if self.cut is not None and t >= self.cut_until:
                self.heal()
                self.note("partition healed")
            if t >= next_fault and t < plan.seconds - 8:
                if self.fault(t):
                    next_fault = t + rng.uniform(*plan.fault_every)
                else:
                    next_fault = t + 0.05  # nobody mid-stroke right now: try again soon
            if t >= next_sample:
                for p in self.current.values():
                    if p is not None:
                        p.sample(t)
                self.loadavg.append(os.getloadavg()[0])
                next_sample = t + 1.0
            if t >= next_stats:
                for p in self.current.values():
                    if p is not None and p.ready_at is not None:
                        try:
                            p.send("stats sample")
                        except PeerError:
                            pass  # it died: the loop above reports that
                next_stats = t + SAMPLE_STATS
            progress(self)
            time.sleep(0.1)

    def fault(self, t: float) -> bool:
        """The next fault from a shuffled bag (two kills, a leave, a partition), so every
        kind comes up in every run. False: try again in a moment."""
        rng, n = self.rng, self.plan.peers
        if not self._bag:
            self._bag = ["kill", "kill", "leave", "partition"]
            rng.shuffle(self._bag)
        kind = self._bag[-1]
        up = [i for i in self.up() if i not in self.restart_at]
        if kind == "partition":
            if self.cut is not None or n < 3:
                self._bag.pop()
                return True
            side = sorted(rng.sample(range(n), rng.randrange(1, n // 2 + 1)))
            self.partition(side)
            self.cut_until = t + rng.uniform(*self.plan.cut_for)
            self.note(f"partition {['h%d' % i for i in side]} | rest for "
                      f"{self.cut_until - t:.1f} s")
        elif len(up) <= 2:
            return False  # keep at least two peers drawing
        elif kind == "kill":
            drawing = [i for i in up if self.current[i].pen_down]
            if not drawing:
                return False
            self.kill(rng.choice(drawing))
        else:
            self.leave(rng.choice(up))
        self._bag.pop()
        return True

    # -- the end

    def finish(self, sync_timeout: float) -> dict:
        """Stop the churn, heal, let everyone sync, compare the boards."""
        self.note("churn stops: loss and partitions removed")
        if self.cut is not None:
            self.heal()
        for i in range(self.plan.peers):
            self.set_loss(i, 0)
        self.reap_leavers(wait=True)
        for i in list(self.restart_at):
            del self.restart_at[i]
            self.start_peer(i)
            self.note(f"restart h{i} for the final comparison")
        for i in range(self.plan.peers):
            if self.current[i] is None:
                self.start_peer(i)
        for p in self.current.values():
            while p.ready_at is None:
                self.poll_ready(p)
                time.sleep(0.05)
        t_stop = self.now()
        for p in self.current.values():
            p.send("stop")
        self.wait_all("stopped", 60)
        for p in self.current.values():
            p.send(f"sync {sync_timeout}")
        syncs = self.wait_all("sync", sync_timeout + 60)
        t_synced = self.now()
        self.note(f"all peers answered sync in {t_synced - t_stop:.1f} s")
        # Synced means holding every datagram; boards that still differ then (a gap passed
        # on in a snapshot, a file) are what anti-entropy mends (PROTOCOL.md): a peer
        # that holds what another holds but shows another digest fetches its state. Give
        # it AE_WAIT, and report both.
        at_sync = len({m["digest"] for m in syncs.values()})
        agreed_after = 0.0 if at_sync == 1 else None
        while agreed_after is None and self.now() - t_synced < AE_WAIT:
            time.sleep(1.0)
            for p in self.current.values():
                p.send("sync 5")
            again = self.wait_all("sync", 65)
            if len({m["digest"] for m in again.values()}) == 1:
                agreed_after = round(self.now() - t_synced, 1)
        if at_sync > 1:
            self.note(f"{at_sync} different boards when synced; "
                      + (f"the same {agreed_after} s later (anti-entropy)"
                         if agreed_after is not None else f"still after {AE_WAIT:.0f} s"))
        boards = {}
        import numpy as np
        for p in self.current.values():
            path = self.work / f"{p.label}.npy"
            p.send(f"npy {path}")
            p.expect("npy", 60)
            boards[p.host] = np.load(path)
            p.send("stats")
            msg = p.expect("stats", 60)
            p.stats = msg["stats"]
            p.skips = msg.get("skips", [])
            p.drawn = msg["drawn"]
            p.send("mem")
            p.mem = p.expect("mem", 60)["mem"]
            p.sample(self.now())
            p.ended = "final"
        for p in self.current.values():
            p.send("quit")
        for p in self.current.values():
            try:
                p.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.proc.kill()
        result = self.compare(boards, syncs, t_synced - t_stop)
        result.update(boards_at_sync=at_sync, agreed_after_s=agreed_after)
        return result

    def wait_all(self, event: str, timeout: float) -> dict[int, dict]:
        """The answer of every current peer, sampling memory every second meanwhile."""
        got: dict[int, dict] = {}
        end = time.monotonic() + timeout
        next_sample = 0.0
        while len(got) < len(self.current):
            if time.monotonic() > end:
                missing = [p.label for p in self.current.values() if p.host not in got]
                raise PeerError(f"no {event!r} from {missing} within {timeout:.0f} s")
            for p in self.current.values():
                if p.host not in got:
                    msg = p.poll(event)
                    if msg is not None:
                        got[p.host] = msg
            if self.now() >= next_sample:
                for p in self.current.values():
                    p.sample(self.now())
                self.loadavg.append(os.getloadavg()[0])
                next_sample = self.now() + 1.0
            time.sleep(0.05)
        return got

    def compare(self, boards: dict, syncs: dict, sync_time: float) -> dict:
        import numpy as np

        from p2pboard.ops import BACKGROUND
        digests = {h: syncs[h]["digest"] for h in boards}
        counts: dict[str, int] = {}
        for d in digests.values():
            counts[d] = counts.get(d, 0) + 1
        top = max(counts.values())
        majority = [d for d, c in counts.items() if c == top]
        if len(majority) == 1:
            ref = next(boards[h] for h in boards if digests[h] == majority[0])
        else:  # no majority board: the per-pixel majority (mode) over all boards
            stack = np.stack([b.view(np.uint32)[..., 0] for b in boards.values()])
            srt = np.sort(stack, axis=0)
            ref = srt[len(stack) // 2].view(np.uint8).reshape(next(iter(boards.values())).shape)
        per_peer = {f"h{h}": int(np.any(b != ref, axis=2).sum()) for h, b in boards.items()}
        final = [p for p in self.current.values()]
        left = [p for p in self.all if p.ended == "left" and p.stats]
        totals = {k: 0 for k in STAT_KEYS}
        rejected: dict[str, int] = {}
        for p in final + left:
            for k in STAT_KEYS:
                if k not in ("missing", "behind") or p in final:  # still missing at the end
                    totals[k] += int(p.stats.get(k, 0))
            for k, v in p.stats.items():
                if k.startswith("rejected_"):
                    rejected[k] = rejected.get(k, 0) + int(v)
        # Gaps skipped as unrecoverable by anyone, plus what a final peer still lacks after
        # syncing: known to exist, not held (a peer that left mid-run naturally had gaps in
        # flight: not counted).
        # (plus, below, the gaps that peers killed later had skipped while their author
        # lived: what they served meanwhile passed the hole on)
        unrecovered = (sum(int(p.stats.get("unrecoverable", 0)) for p in final + left)
                       + sum(int(p.stats.get("behind", p.stats.get("missing", 0)))
                             for p in final))
        # Who skipped what, whose it was, and what had become of its author then.
        by_id = {p.id: p for p in self.all if p.id}
        skips = []
        killed = [p for p in self.all if p.ended == "killed" and p.last_stats]
        for p, later in [(p, False) for p in final + left] + [(p, True) for p in killed]:
            for t, sid, first, last, lost, said in (p.last_stats.get("skips", []) if later
                                                    else p.skips):
                if later:
                    unrecovered += lost
                a = by_id.get(sid)
                skips.append({
                    "sid": sid, "first": first, "said": said,
                    "after_kill": (a is not None and a.ended == "killed"
                                   and t - self.t0 >= a.ended_at),
                    "at_s": round(t - self.t0, 1),
                    "peer": p.label + (" (killed later)" if later else ""),
                    "author": a.label if a else f"{sid:08x}",
                    "author_end": f"{a.ended or 'final'}"
                                  + (f" at {a.ended_at:.1f} s" if a and a.ended_at else "")
                    if a else "unknown",
                    "seqs": f"{first}-{last}", "never_held": lost, "most_held_by_a_peer": said})
        # What the authors of gaps skipped while they lived said of the NACKs they got
        # (their last counters: the final ones, or the last sample before a kill).
        refusals = {}
        for k in skips:
            a = by_id.get(k["sid"])
            if a is None or k["after_kill"] or a.label in refusals:
                continue
            st = a.stats or (a.last_stats or {}).get("stats")
            if st:
                refusals[a.label] = {c: st.get(c, 0) for c in AUTHOR_KEYS}
        # Lost with a killed author: skipped after its kill -9 by peers of whom the first
        # heard nobody live say it held them (later ones may hear the first skipper's
        # claim). Datagrams lost on the wire just before a kill die with their author (its
        # autosave still has their ink; the restarted peer brings it back).
        skips.sort(key=lambda k: k["at_s"])
        first_said: dict[tuple[int, int], int] = {}
        for k in skips:
            first_said.setdefault((k["sid"], k["first"]), k["said"])
        for k in skips:
            k["with_killed_author"] = (k.pop("after_kill")
                                       and first_said[(k["sid"], k["first"])] < k["first"])
            del k["sid"], k["first"], k["said"]
        drawn: dict[str, int] = {}
        for p in final:
            for k, v in p.drawn.items():
                drawn[k] = drawn.get(k, 0) + v
        return {
            "divergent_pixels": sum(per_peer.values()),
            "divergent_per_peer": per_peer,
            "distinct_boards": len(counts),
            "unrecovered_gaps": unrecovered,
            "unrecovered_with_killed_author": sum(k["never_held"] for k in skips
                                                  if k["with_killed_author"]),
            "skips": skips,
            "all_synced": all(s["synced"] for s in syncs.values()),
            "sync_failures": {f"h{h}": s["why"] for h, s in syncs.items() if not s["synced"]},
            "sync_seconds": round(sync_time, 1),
            "totals": totals,
            "rejected": rejected,
            "drawn_by_final_peers": drawn,
            "stats_from": f"{len(final)} final peers and {len(left)} that left gracefully "
                          "(a killed peer's last sampled counters are in the --json "
                          "output, not in these totals)",
            "per_peer_stats": {p.label: p.stats for p in final + left},
            # killed peers: their counters and skips as last sampled before the kill
            "killed_stats": {p.label: {"sampled_before_kill_s": round(
                                 p.ended_at - (p.last_stats_at - self.t0), 1),
                                 "stats": p.last_stats["stats"],
                                 "skips": p.last_stats.get("skips", [])}
                             for p in killed},
            "authors_of_live_skips": refusals,
            # Our own files and snapshots must always load: either is a bug, never the
            # network's doing (every peer here is honest).
            "autosave_problems": {p.label: p.autosave_problem for p in self.all
                                  if p.autosave_problem},
            "snapshots_refused": rejected.get("rejected_snapshot", 0),
            "memory_breakdown": {p.label: p.mem for p in final},
            "painted_pixels": int(np.any(ref != np.array(BACKGROUND, np.uint8), axis=2).sum()),
        }


# ---------------------------------------------------------------------------- reporting


def memory_report(soak: Soak) -> dict:
    out = {}
    for p in soak.all:
        if not p.rss:
            continue
        kb = [v for _, v in p.rss]
        life = (p.rss[-1][0] - p.rss[0][0]) or 1.0
        tick = os.sysconf("SC_CLK_TCK")
        out[p.label] = {
            "from_s": round(p.rss[0][0], 1), "to_s": round(p.rss[-1][0], 1),
            "ended": p.ended or "running", "samples": len(kb),
            "first_mb": round(kb[0] / 1024, 1), "min_mb": round(min(kb) / 1024, 1),
            "avg_mb": round(statistics.fmean(kb) / 1024, 1), "max_mb": round(max(kb) / 1024, 1),
            "last_mb": round(kb[-1] / 1024, 1),
            "cpu_percent": round(100 * p.cpu_ticks / tick / max(life, p.rss[-1][0] - p.started),
                                 1),
            "pid_is_python": p.pid_ok, "autosave": p.autosave,
            "series": [(round(t, 1), v) for t, v in p.rss],
        }
    return out


BARS = "▁▂▃▄▅▆▇█"


def sparklines(mem: dict, seconds: float, width: int = 60) -> list[str]:
    """One line per host: its RSS over the run (all its processes), blank where down."""
    width = max(1, min(width, int(seconds)))
    allv = [v for m in mem.values() for _, v in m["series"]]
    if not allv:
        return []
    lo, hi = min(allv), max(allv)
    hosts = sorted({k.split(".")[0] for k in mem}, key=lambda h: int(h[1:]))
    lines = [f"RSS per host over {seconds:.0f} s, one column per {seconds / width:.0f} s, "
             f"{lo / 1024:.0f} MB (▁) to {hi / 1024:.0f} MB (█); blank: no peer"]
    for h in hosts:
        cols = [[] for _ in range(width)]
        for label, m in mem.items():
            if label.split(".")[0] != h:
                continue
            for t, v in m["series"]:
                cols[min(width - 1, int(t / seconds * width))].append(v)
        row = "".join(" " if not c else BARS[min(7, int((max(c) - lo) / max(1, hi - lo) * 8))]
                      for c in cols)
        lines.append(f"{h:>4} |{row}|")
    return lines


def plot(mem: dict, events: list, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for label, m in sorted(mem.items()):
        host = int(label.split(".")[0][1:])
        ts = [t / 60 for t, _ in m["series"]]
        ax.plot(ts, [v / 1024 for _, v in m["series"]], color=colors[host % len(colors)],
                lw=1, label=f"h{host}" if label.endswith(".1") else None)
        if m["ended"] == "killed":
            ax.plot(ts[-1], m["series"][-1][1] / 1024, "x", color="k", ms=5)
    ax.set_xlabel("minutes")
    ax.set_ylabel("VmRSS (MB)")
    ax.set_title("Memory of every peer process (x: killed with SIGKILL, then restarted)")
    ax.legend(loc="lower right", fontsize=8, ncol=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def machine() -> str:
    cpu = "unknown CPU"
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    mem = "?"
    try:
        m = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        mem = f"{int(m.group(1)) / 1024 / 1024:.0f} GiB"
    except (OSError, AttributeError):
        pass
    return (f"{os.cpu_count()} CPUs ({cpu}), {mem} RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def _agreement(r: dict) -> str:
    """How many boards there were when all were synced, if more than one, and when
    anti-entropy made them one."""
    n, after = r.get("boards_at_sync") or 1, r.get("agreed_after_s")
    if n == 1:
        return ""
    return f"; {n} when all were synced" + (
        f", the same {after} s later by anti-entropy" if after is not None else "")


def render(res: dict) -> str:
    """The Markdown block written into docs/RELIABILITY.md."""
    r, mem = res["result"], res["memory"]
    lines = [
        f"Command: `{res['command']}`  ",
        f"Date: {res['date']} (start) to {res['ended']} (end)  ",
        f"Machine: {res['machine']}. Load average (1, 5, 15 min) {res['load_before']} before "
        f"the run, {res['load_after']} after; the 1-minute load during the run was "
        f"{res['load_during'][0]} to {res['load_during'][2]} (mean {res['load_during'][1]}): "
        "the cores were shared with other work, so the peers competed for CPU with each "
        "other and with unrelated processes  ",
        f"Board {res['size']}, {res['peers']} hosts, {res['seconds']:.0f} s of churn, "
        f"seed {res['seed']}, autosave {'on' if res['autosave'] else 'not available yet'}",
        "",
        f"**Divergent pixels: {r['divergent_pixels']}** ({r['distinct_boards']} distinct "
        f"board(s) among {len(r['divergent_per_peer'])} peers{_agreement(r)}), "
        f"**unrecovered gaps: "
        f"{r['unrecovered_gaps']}** ({r.get('unrecovered_with_killed_author', 0)} of them lost "
        f"with a killed author: never held by any live peer), all synced: {r['all_synced']} "
        f"({r['sync_seconds']} s after drawing stopped), snapshots refused: "
        f"{r.get('snapshots_refused', '-')}, saved boards set aside at a restart: "
        f"{len(r.get('autosave_problems', {}))}. Verdict: "
        f"**{'PASS' if res['ok'] else 'FAIL'}**.",
        "",
        "| faults injected | count |", "|---|---|",
    ]
    lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in res["faults"].items()]
    t = r["totals"]
    lines += ["", f"Counters summed over {r['stats_from']}:", "",
              "| counter | total |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in t.items()]
    lines += [f"| {k} | {v} |" for k, v in sorted(r["rejected"].items())]
    if r.get("skips"):
        lines += ["", "Gaps skipped as unrecoverable (who skipped them, whose datagrams, what "
                  "had become of their author, and the most any live peer then said it held "
                  "of that author's datagrams):", "",
                  "| at s | peer | author | author ended | seqs | never held | most held by a "
                  "peer | lost with a killed author |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {k['at_s']} | {k['peer']} | {k['author']} | {k['author_end']} | "
                  f"{k['seqs']} | {k['never_held']} | {k['most_held_by_a_peer']} | "
                  f"{'yes' if k.get('with_killed_author') else 'no'} |"
                  for k in r["skips"]]
        if r.get("authors_of_live_skips"):
            lines += ["", "What the authors of the gaps skipped while they lived counted of "
                      "the NACKs sent to them (their final counters, or the last sample "
                      "before they were killed):", "",
                      "| author | " + " | ".join(AUTHOR_KEYS) + " |",
                      "|---" * (len(AUTHOR_KEYS) + 1) + "|"]
            lines += [f"| {a} | " + " | ".join(str(c.get(k, 0)) for k in AUTHOR_KEYS) + " |"
                      for a, c in sorted(r["authors_of_live_skips"].items())]
    lines += ["", f"Drawn by the peers present at the end: {r['drawn_by_final_peers']}; "
              f"{r['painted_pixels']} pixels of the final board are not background-coloured.",
              "", "Memory per peer process (VmRSS sampled every second; `h2.3` is the third "
              "process on host 2):", "",
              "| process | from s | to s | ended | first MB | min | avg | max | last MB | CPU % |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for label, m in sorted(mem.items(), key=lambda kv: (int(kv[0].split('.')[0][1:]),
                                                       int(kv[0].split('.')[1]))):
        lines.append(f"| {label} | {m['from_s']} | {m['to_s']} | {m['ended']} | {m['first_mb']} "
                     f"| {m['min_mb']} | {m['avg_mb']} | {m['max_mb']} | {m['last_mb']} "
                     f"| {m['cpu_percent']} |")
    lines += ["", "```", *res["sparklines"], "```", ""]
    mb = r.get("memory_breakdown") or {}
    if mb:
        keys = list(next(iter(mb.values())).keys())
        lines += ["Where the memory of the final peers goes (engine internals at the end):", "",
                  "| process | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {label} | " + " | ".join(str(m.get(k, "")) for k in keys) + " |"
                  for label, m in sorted(mb.items())]
        lines.append("")
    if res.get("plot"):
        lines += ["![RSS of every peer over the run](soak-memory.png)", ""]
    lines += ["<details><summary>Fault log</summary>", "", "```"]
    lines += [f"{t:7.1f} s  {e}" for t, e in res["events"]]
    lines += ["```", "", "</details>"]
    return "\n".join(lines)


def write_doc(block: str) -> None:
    text = DOC.read_text() if DOC.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{block}\n{END}{tail}")


class Progress:
    def __init__(self, total: float) -> None:
        self.total = total
        self.tty = sys.stderr.isatty()
        self.last = -1e9

    def __call__(self, soak: Soak) -> None:
        t = soak.now()
        if not self.tty and t - self.last < (5 if self.total < 120 else 30):
            return
        self.last = t
        frac = min(1.0, t / self.total)
        bar = "#" * int(frac * 30) + "." * (30 - int(frac * 30))
        up = len(soak.up())
        rss = [p.rss[-1][1] / 1024 for p in soak.current.values() if p is not None and p.rss]
        loss = "/".join(str(soak.loss[i]) for i in range(soak.plan.peers))
        line = (f"[{bar}] {t:5.0f}/{self.total:.0f} s  live {up}/{soak.plan.peers}  "
                f"loss {loss} %  RSS {min(rss, default=0):.0f}-{max(rss, default=0):.0f} MB"
                f"{'  CUT' if soak.cut else ''}  {soak.events[-1][1][:40] if soak.events else ''}")
        if self.tty:
            sys.stderr.write("\r" + line.ljust(150)[:150])
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


# ---------------------------------------------------------------------------- main


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=int, default=None, help="hosts, one peer each (default 6)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--minutes", type=float, default=None)
    g.add_argument("--seconds", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--size", default=None, help="board WxH (default 1920x1080)")
    p.add_argument("--quick", action="store_true",
                   help="the CI version: 4 hosts, 480x320, 25 s of churn, faster faults")
    p.add_argument("--write", action="store_true",
                   help="put the results into docs/RELIABILITY.md (and docs/soak-memory.png)")
    p.add_argument("--json", type=Path, default=None, help="write every result as JSON")
    p.add_argument("--sync-timeout", type=float, default=90.0)
    p.add_argument("--keep", action="store_true", help="keep the work directory (boards, logs)")
    a = p.parse_args(argv)
    if a.quick:
        # Faults 3-4 s apart: the whole bag (two kills, a leave, a partition) falls within
        # the churn's first 17 s (none later than 8 s before its end), so every kind comes
        # up in every quick run, as its test asserts. At 5-8 s apart only two or three
        # did, and with some seeds (109) and a slow host (seed 1's kill came at 16.7 s)
        # a run had no kill.
        plan = Plan(peers=a.peers or 4, seconds=a.seconds or (a.minutes or 0) * 60 or 25.0,
                    seed=a.seed if a.seed is not None else 1, size=a.size or "480x320",
                    quick=True, loss_every=(4.0, 8.0), fault_every=(3.0, 4.0),
                    kill_down=(1.5, 3.0), leave_down=(1.5, 3.0), cut_for=(2.0, 3.0))
    else:
        secs = a.seconds if a.seconds is not None else 60 * (a.minutes if a.minutes else 10)
        plan = Plan(peers=a.peers or 6, seconds=secs,
                    seed=a.seed if a.seed is not None else random.randrange(1 << 16),
                    size=a.size or "1920x1080", quick=False)
    if plan.peers < 2:
        p.error("--peers must be at least 2")
    if not re.fullmatch(r"\d+x\d+", plan.size):
        p.error(f"--size {plan.size!r} is not WxH")
    return a, plan


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a, plan = parse(argv)
    try:
        ensure_private_netns(argv)
        from tests.netlab import Lan, lan_problem
        problem = lan_problem()
        if problem:
            raise SetupError(problem)
    except SetupError as err:
        print(f"soak.py: {err}", file=sys.stderr)
        return 2
    command = "scripts/soak.py " + " ".join(argv)
    print(f"soak.py: {plan.peers} hosts, {plan.seconds:.0f} s, seed {plan.seed}, board "
          f"{plan.size}", file=sys.stderr)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    work = Path(tempfile.mkdtemp(prefix="p2pboard-soak-"))
    progress = Progress(plan.seconds)
    soak = None
    try:
        with Lan(plan.peers) as lan:
            soak = Soak(plan, lan, work, print)
            try:
                soak.run(progress)
                progress.done()
                print("soak.py: churn over; healing, syncing and comparing", file=sys.stderr)
                result = soak.finish(a.sync_timeout)
            except PeerError as err:
                progress.done()
                print(f"soak.py: FAIL: {err}; logs in {work}", file=sys.stderr)
                a.keep = True
                for t, e in soak.events[-15:]:
                    print(f"{t:7.1f} s  {e}", file=sys.stderr)
                return 1
    finally:
        if soak is not None and not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    mem = memory_report(soak)
    res = {
        "command": command, "date": started,
        "ended": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(), "load_before": load_before,
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "peers": plan.peers, "seconds": plan.seconds, "seed": plan.seed, "size": plan.size,
        "autosave": any(p.autosave for p in soak.all),
        "pid_checks": all(m["pid_is_python"] for m in mem.values()),
        "load_during": [round(min(soak.loadavg, default=0), 2),
                        round(statistics.fmean(soak.loadavg or [0]), 2),
                        round(max(soak.loadavg, default=0), 2)],
        "faults": soak.fault_counts, "events": soak.events, "result": result, "memory": mem,
        "sparklines": sparklines(mem, soak.now()),
    }
    # Datagrams lost with an author killed before anyone could repair them are reported,
    # not failed: no protocol can recover what nobody received (their ink must still be on
    # every board: divergent pixels count that).
    res["ok"] = (result["divergent_pixels"] == 0 and result["all_synced"]
                 and result["unrecovered_gaps"] == result["unrecovered_with_killed_author"]
                 and not result["autosave_problems"] and result["snapshots_refused"] == 0)
    print("\n".join(res["sparklines"]))
    print(f"memory (MB, first/max/last): " + ", ".join(
        f"{k} {m['first_mb']}/{m['max_mb']}/{m['last_mb']}" for k, m in sorted(mem.items())))
    for label, m in sorted(result["memory_breakdown"].items()):
        print(f"{label} holds: {m}")
    print(f"faults: {soak.fault_counts}")
    print(f"totals: {result['totals']}")
    print(f"rejected: {result['rejected']}")
    print(f"divergent pixels: {result['divergent_pixels']} {result['divergent_per_peer']}; "
          f"unrecovered gaps: {result['unrecovered_gaps']}; all synced: {result['all_synced']} "
          f"in {result['sync_seconds']} s {result['sync_failures'] or ''}; snapshots refused: "
          f"{result['snapshots_refused']}; saved boards set aside: "
          f"{result['autosave_problems'] or 0}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    if a.write:
        res["plot"] = plot(mem, soak.events, PLOT)
        write_doc(render(res))
        print(f"soak.py: results written to {DOC}", file=sys.stderr)
    print(f"soak.py: {'PASS' if res['ok'] else 'FAIL'} (seed {plan.seed})")
    if not res["ok"] and a.keep:
        print(f"soak.py: boards and logs kept in {work}", file=sys.stderr)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
