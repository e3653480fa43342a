"""The command line: clear errors with exit status 2, and a headless peer that saves a PNG."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xxhash
from PIL import Image as PILImage

from .netns import require_netns
from .test_loopback import Peer, port_for

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "p2pboard", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_help_lists_every_flag():
    r = run_cli("--help")
    assert r.returncode == 0
    for flag in ("--group", "--port", "--iface", "--ttl", "--name", "--size", "--headless",
                 "--save", "--secret-file", "--rate"):
        assert flag in r.stdout


@pytest.mark.parametrize("args, words", [
    (["--group", "10.0.0.1"], "multicast"),
    (["--group", "nonsense"], "group"),
    (["--port", "0"], "port"),
    (["--port", "70000"], "port"),
    (["--port", "x"], "invalid int"),
    (["--ttl", "300"], "ttl"),
    (["--size", "big"], "WIDTHxHEIGHT"),
    (["--size", "0x10"], "size"),
    (["--size", "99999x10"], "size"),
    (["--iface", "not-an-address"], "interface"),
    (["--save", "board.jpg"], ".png"),
    (["--save", "/no/such/folder/b.png"], "does not exist"),
    (["--name", ""], "name"),
    (["--frobnicate"], "unrecognized"),
])
def test_bad_flags_exit_2_with_a_clear_message(args, words):
    r = run_cli(*args)
    assert r.returncode == 2, r
    assert words.lower() in r.stderr.lower(), r.stderr
    assert "Traceback" not in r.stderr


def test_unusable_secret_files_exit_2_naming_the_file(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path, words in ((tmp_path / "missing", "cannot read secret file"),
                        (empty, "is empty"), (tmp_path, "is a directory")):
        r = run_cli("--headless", "--secret-file", str(path))
        assert r.returncode == 2, r
        assert words in r.stderr and str(path) in r.stderr, r.stderr


def test_headless_peer_keeps_the_board_and_saves_it(tmp_path):
    require_netns()
    port = port_for("cli-headless")
    out = tmp_path / "board.png"
    head = subprocess.Popen([sys.executable, "-m", "p2pboard", "--headless", "--iface",
                             "127.0.0.1", "--port", str(port), "--size", "320x240", "--save",
                             str(out), "--name", "keeper"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        drawer = Peer("drawer", port)
        drawer.send("draw 7 5")
        drawer.expect("drawn", 60)
        want = drawer.sync(30)
        assert want["synced"] and want["peers"] == 1, (want, head.poll())
        drawer.quit()
        # The drawer has left: a newcomer gets the board from the headless peer alone.
        late = Peer("late", port)
        got = late.sync(30)
        late.quit()
        assert got["digest"] == want["digest"]
    finally:
        head.send_signal(signal.SIGTERM)
        _, err = head.communicate(timeout=30)
    assert head.returncode == 0, err
    assert "saved the board" in err
    img = np.asarray(PILImage.open(out).convert("RGBA"))
    assert img.shape == (240, 320, 4)
    assert xxhash.xxh3_128_hexdigest(img.tobytes()) == want["digest"]
