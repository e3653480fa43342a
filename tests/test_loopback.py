"""The loopback multicast harness: real peer processes on one host, in the private network
namespace that scripts/test.sh creates (multicast routed on lo, nothing can leave)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .netns import require_netns

ROOT = Path(__file__).resolve().parent.parent


class Peer:
    """A tests/peer_proc.py process driven over its stdin/stdout."""

    def __init__(self, name: str, port: int, iface: str = "127.0.0.1", size: str = "320x240",
                 prefix: list[str] | None = None, secret: str | None = None,
                 data_dir: str | None = None, extra: list[str] | None = None) -> None:
        argv = [*(prefix or []), sys.executable, "-m", "tests.peer_proc", "--port", str(port),
                "--iface", iface, "--name", name, "--size", size]
        if secret is not None:
            argv += ["--secret", secret]
        if data_dir is not None:
            argv += ["--data-dir", str(data_dir)]
        argv += extra or []
        self.name = name
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     bufsize=1, env={**os.environ, "PYTHONPATH": str(ROOT)})
        ready = self.expect("ready", 60)
        self.id, self.restored = ready["id"], ready.get("restored", False)

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, event: str, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"{self.name} exited: {self.proc.stderr.read()[-3000:]}")
            msg = json.loads(line)
            if msg["event"] == event:
                return msg
        raise AssertionError(f"{self.name}: no {event} in {timeout} s")

    def sync(self, timeout: float = 30) -> dict:
        self.send(f"sync {timeout}")
        return self.expect("sync", timeout + 30)

    def stats(self) -> dict:
        self.send("stats")
        return self.expect("stats", 30)["stats"]

    def rss(self) -> int:
        """Resident memory of the peer process, in bytes (from /proc)."""
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def quit(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(timeout=20)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.proc.wait()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def peers(request):
    made: list[Peer] = []

    def make(name, port, **kw):
        p = Peer(name, port, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.quit()


def port_for(test: str) -> int:
    return 40000 + (hash(test) % 20000)


def test_peers_drawing_at_once_a_late_joiner_and_a_killed_peer_converge(peers):
    require_netns()
    port = port_for("converge")
    group = [peers(f"p{i}", port) for i in range(4)]
    for i, p in enumerate(group):
        p.send(f"draw {i + 1} 12")
    victim = group[3]
    time.sleep(0.4)
    victim.kill()  # in the middle of its strokes
    for p in group[:3]:
        p.expect("drawn", 120)
    late = peers("late", port)
    late.send("draw 99 3")
    late.expect("drawn", 60)
    survivors = group[:3] + [late]
    results = [p.sync(40) for p in survivors]
    digests = {r["digest"] for r in results}
    assert all(r["synced"] for r in results), results
    assert len(digests) == 1, results
    stats = [p.stats() for p in survivors]
    assert all(s["rejected_malformed"] == 0 for s in stats)
    assert late.stats()["snapshots_received"] >= 1


def test_restarted_peer_gets_the_board_back(peers):
    require_netns()
    port = port_for("restart")
    a = peers("a", port)
    b = peers("b", port)
    a.send("draw 5 6")
    a.expect("drawn", 60)
    before = a.sync(20)
    b.kill()
    b2 = peers("b-again", port)
    after = b2.sync(30)
    assert after["synced"] and after["digest"] == before["digest"]


def test_a_passphrase_board_and_an_open_board_on_one_address_stay_apart(peers):
    require_netns()
    port = port_for("protected")
    a = peers("a", port, secret="a long shared passphrase")
    b = peers("b", port, secret="a long shared passphrase")
    x = peers("x", port)  # no passphrase
    a.send("draw 7 4")
    x.send("draw 8 4")
    a.expect("drawn", 60)
    x.expect("drawn", 60)
    ra, rb = a.sync(30), b.sync(30)
    assert ra["synced"] and rb["synced"] and ra["digest"] == rb["digest"]
    assert ra["peers"] == rb["peers"] == 1  # x is not among them
    rx = x.sync(10)
    assert rx["peers"] == 0 and rx["digest"] != ra["digest"]
    sa, sb, sx = a.stats(), b.stats(), x.stats()
    assert sa["rejected_unsealed"] > 0 and sb["data_received"] > 0
    assert sx["rejected_sealed"] > 0 and sx["data_received"] == 0


def wait_for(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not {what} after {timeout} s")


def test_a_killed_peer_restarts_from_its_file_and_merges_with_what_others_drew(peers,
                                                                                tmp_path):
    require_netns()
    port = port_for("autosave")
    a = peers("a", port, data_dir=tmp_path)
    assert not a.restored
    a.send("draw 31 5")  # alone
    a.expect("drawn", 60)
    alone = a.sync(5)["digest"]
    wait_for(lambda: a.stats()["autosave_pending"] == 0, 20, "saved")  # the file caught up
    a.send(f"png {tmp_path / 'alone.png'}")
    a.expect("png", 30)
    a.kill()
    b, c = peers("b", port), peers("c", port)
    b.send("draw 32 4")
    c.send("draw 33 4")
    b.expect("drawn", 60)
    c.expect("drawn", 60)
    others = b.sync(20)["digest"]
    assert others != alone
    a2 = peers("a-again", port, data_dir=tmp_path)
    assert a2.restored
    results = [p.sync(40) for p in (a2, b, c)]
    assert all(r["synced"] for r in results), results
    merged = {r["digest"] for r in results}
    assert len(merged) == 1 and merged.isdisjoint({alone, others}), results
    # and everything a drew alone is there (others may have drawn over it, never erased)
    a2.send(f"png {tmp_path / 'merged.png'}")
    a2.expect("png", 30)
    import numpy as np
    from PIL import Image

    def ink(name):
        return (np.asarray(Image.open(tmp_path / name).convert("RGB")) != 255).any(axis=-1)

    alone_ink, merged_ink = ink("alone.png"), ink("merged.png")
    assert alone_ink.sum() > 500
    assert not (alone_ink & ~merged_ink).any()
    assert merged_ink.sum() > alone_ink.sum()
