"""The Kivy window, for real: an X server without a screen (Xvfb), the app drawn on with
xdotool as a person would, and headless peers in the same private network namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from .netns import require_netns
from .test_loopback import Peer, port_for

ROOT = Path(__file__).resolve().parent.parent
SIZE = (640, 400)
BLANK = None


def require_display_tools() -> None:
    require_netns()
    missing = [t for t in ("Xvfb", "xdotool") if shutil.which(t) is None]
    try:
        import kivy  # noqa: F401
    except ImportError:
        missing.append("kivy")
    if missing:
        msg = f"missing {', '.join(missing)} (scripts/test.sh installs them as root)"
        if os.environ.get("CI"):
            pytest.fail(msg + ": under CI nothing may be skipped")
        pytest.skip(msg)


def start_xvfb(screen: str = "1600x900x24") -> tuple[subprocess.Popen, str]:
    """An X server of our own. Xvfb picks a free display itself and tells us which
    (-displayfd), so concurrent test runs on one machine never share a screen."""
    rfd, wfd = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(wfd), "-screen", "0", screen,
                             "-nolisten", "tcp"], pass_fds=(wfd,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(wfd)
    with os.fdopen(rfd) as r:
        number = r.readline().strip()  # written once the server is ready
    if not number.isdigit():
        proc.kill()
        raise RuntimeError("Xvfb did not start")
    return proc, f":{number}"


@pytest.fixture(scope="module")
def display():
    require_display_tools()
    proc, disp = start_xvfb()
    yield disp
    proc.terminate()
    proc.wait()


class Window:
    """A p2pboard window process with its state and control files."""

    def __init__(self, display: str, port: int, tmp: Path, name: str, geometry=(0, 0, 1000, 640),
                 extra_env=None, args=("--iface", "127.0.0.1"), prefix=(), size=SIZE,
                 joined: bool = True) -> None:
        self.display = display
        self.name = name
        self.state_file = tmp / f"{name}.state.json"
        self.control = tmp / f"{name}.control"
        self.control.write_text("")
        self.save_dir = tmp / f"{name}-saved"
        self.save_dir.mkdir()
        self.geometry = geometry
        env = {**os.environ, "DISPLAY": display, "PYTHONPATH": str(ROOT),
               "P2PBOARD_UI_STATE": str(self.state_file), "P2PBOARD_UI_CONTROL": str(self.control),
               "P2PBOARD_UI_GEOMETRY": ",".join(map(str, geometry)),
               "P2PBOARD_SAVE_DIR": str(self.save_dir), "KIVY_NO_ARGS": "1",
               "KIVY_NO_CONSOLELOG": "1", **(extra_env or {})}
        self.log = open(tmp / f"{name}.log", "w")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "p2pboard", *args, "--port", str(port),
             "--size", f"{size[0]}x{size[1]}", "--name", name], cwd=ROOT, env=env,
            stdout=self.log, stderr=subprocess.STDOUT)
        if joined:
            self.wait(lambda s: s.get("digest") is not None and not s.get("joining"), 60,
                      "joined")

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def wait(self, pred, timeout: float, what: str) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"window exited: {Path(self.log.name).read_text()[-3000:]}")
            s = self.state()
            if s and pred(s):
                return s
            time.sleep(0.1)
        raise AssertionError(f"window: not {what} after {timeout} s; state {self.state()}")

    def command(self, line: str) -> None:
        with open(self.control, "a") as f:
            f.write(line + "\n")

    def xdo(self, *args: str) -> None:
        subprocess.run(["xdotool", *args], env={**os.environ, "DISPLAY": self.display},
                       check=True, timeout=20)

    def screen_point(self, bx: float, by: float) -> tuple[int, int]:
        """Screen pixel of board point (bx, by), from the view the app reports."""
        s = self.state()
        ox, oy, scale = s["view"]
        _, wh = s["window"]
        gx, gy = self.geometry[:2]
        wx, wy = ox + bx * scale, oy + (SIZE[1] - by) * scale
        return int(gx + wx), int(gy + wh - wy)

    def drag(self, points, button: int = 1, keys: tuple[str, ...] = ()) -> None:
        x, y = self.screen_point(*points[0])
        self.xdo("mousemove", str(x), str(y))
        time.sleep(0.1)
        for k in keys:
            self.xdo("keydown", k)
        self.xdo("mousedown", str(button))
        time.sleep(0.05)
        for p in points[1:]:
            x, y = self.screen_point(*p)
            self.xdo("mousemove", str(x), str(y))
            time.sleep(0.05)
        self.xdo("mouseup", str(button))
        for k in keys:
            self.xdo("keyup", k)
        time.sleep(0.2)

    def key(self, *keys: str) -> None:
        x, y = self.screen_point(SIZE[0] / 2, SIZE[1] / 2)
        self.xdo("mousemove", str(x), str(y))
        r = subprocess.run(["xdotool", "search", "--name", f"— {self.name} —"], text=True,
                           capture_output=True, env={**os.environ, "DISPLAY": self.display})
        for wid in r.stdout.split()[:1]:
            self.xdo("windowfocus", "--sync", wid)
        for k in keys:
            self.xdo("key", k)
            time.sleep(0.15)

    def screenshot(self, tmp: Path, name: str) -> np.ndarray:
        """The window as rendered (Kivy's own screenshot of the GL frame)."""
        self.command(f"screenshot {tmp / name}.png")
        end = time.monotonic() + 15
        while time.monotonic() < end:
            shots = sorted(tmp.glob(f"{name}*.png"))
            if shots:
                time.sleep(0.3)
                return np.asarray(PILImage.open(shots[-1]).convert("RGB"))
            time.sleep(0.1)
        raise AssertionError("no screenshot")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.command("quit")
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def win_port(win: Window) -> int:
    return int(win.proc.args[win.proc.args.index("--port") + 1])


def board_png(peer: Peer, tmp: Path, name: str) -> np.ndarray:
    path = tmp / f"{name}.png"
    peer.send(f"png {path}")
    peer.expect("png", 30)
    return np.asarray(PILImage.open(path).convert("RGBA"))


@pytest.fixture
def setup(display, tmp_path, request):
    made = []

    def make_window(name="window", **kw):
        w = Window(display, request.node.port, tmp_path, name, **kw)
        made.append(w)
        return w

    def make_peer(name="headless"):
        p = Peer(name, request.node.port, size=f"{SIZE[0]}x{SIZE[1]}")
        made.append(p)
        return p

    request.node.port = port_for(request.node.name)
    yield make_window, make_peer
    for m in reversed(made):
        if isinstance(m, Window):
            m.close()
        else:
            m.quit()


def synced_digest(win: Window, peer: Peer, timeout: float = 20) -> str:
    """Wait until the window and the peer hold the same board; return its digest."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = peer.sync(10)
        s = win.state()
        if r["synced"] and s.get("digest") == r["digest"]:
            return r["digest"]
        time.sleep(0.2)
    raise AssertionError(f"window {win.state().get('digest')} != peer {r['digest']}")


def test_mouse_drawing_reaches_a_headless_peer_exactly(setup, tmp_path):
    make_window, make_peer = setup
    win = make_window()
    peer = make_peer()
    blank = synced_digest(win, peer)
    win.drag([(100, 100), (200, 150), (300, 120), (400, 250)])
    d = synced_digest(win, peer)
    assert d != blank
    px = board_png(peer, tmp_path, "after-draw")
    ink = (px[..., :3] != 255).any(-1)
    assert ink.sum() > 300, "the stroke did not reach the peer"
    # the stroke passes near the points we dragged through
    for bx, by in [(100, 100), (200, 150), (400, 250)]:
        assert ink[by - 4:by + 5, bx - 4:bx + 5].any(), (bx, by)


def test_headless_stroke_shows_in_the_window(setup, tmp_path):
    make_window, make_peer = setup
    win = make_window()
    peer = make_peer()
    peer.send("stroke 60 200 580 200 200 30 30 24")
    peer.expect("stroked", 10)
    synced_digest(win, peer)
    time.sleep(0.3)
    shot = win.screenshot(tmp_path, "remote-stroke")
    x, y = win.screen_point(320, 200)
    gx, gy = win.geometry[:2]
    r, g, b = shot[y - gy, x - gx]
    assert r > 150 and g < 90 and b < 90, (r, g, b)
    x, y = win.screen_point(320, 100)  # off the stroke: white board
    assert tuple(shot[y - gy, x - gx]) == (255, 255, 255)


def test_undo_redo_eraser_clear_image_and_save(setup, tmp_path):
    make_window, make_peer = setup
    win = make_window()
    peer = make_peer()
    blank = synced_digest(win, peer)
    win.drag([(100, 200), (500, 200)])
    drawn = synced_digest(win, peer)
    assert drawn != blank

    win.key("ctrl+z")
    assert synced_digest(win, peer) == blank  # undone everywhere
    win.key("ctrl+y")
    assert synced_digest(win, peer) == drawn  # and redone

    # the eraser takes pixels off, not the whole stroke
    win.key("e")
    win.wait(lambda s: s["eraser"], 5, "eraser on")
    win.drag([(300, 150), (300, 250)])
    synced_digest(win, peer)
    px = board_png(peer, tmp_path, "erased")
    ink = (px[..., :3] != 255).any(-1)
    assert not ink[195:206, 299:302].any(), "eraser left ink"
    assert ink[198:203, 150].any() and ink[198:203, 450].any(), "eraser took the whole stroke"
    win.key("p")
    erased = synced_digest(win, peer)

    # clear asks first, says how many people, and can be undone
    win.key("ctrl+Delete")
    win.wait(lambda s: s["popup"] == "clear", 5, "asking to clear")
    win.key("Return")
    win.wait(lambda s: s["popup"] == "", 5, "confirmed")
    cleared = synced_digest(win, peer)
    assert cleared != erased
    assert not (board_png(peer, tmp_path, "cleared")[..., :3] != 255).any()
    win.key("ctrl+z")
    assert synced_digest(win, peer) == erased

    # an image dropped on the window lands where it was dropped, for everyone
    img = np.zeros((40, 60, 4), np.uint8)
    img[..., 0], img[..., 1], img[..., 2], img[..., 3] = 10, 200, 60, 255
    path = tmp_path / "green.png"
    PILImage.fromarray(img).save(path)
    x, y = win.screen_point(500, 320)
    s = win.state()
    gx, gy = win.geometry[:2]
    win.command(f"drop {path} {x - gx} {s['window'][1] - (y - gy)}")
    win.wait(lambda st: st["digest"] != s["digest"], 10, "showing the image")
    synced_digest(win, peer)
    px = board_png(peer, tmp_path, "image")
    assert tuple(px[320, 500, :3]) == (10, 200, 60)
    assert tuple(px[320, 540, :3]) == (255, 255, 255)

    # Ctrl+S writes a timestamped PNG of the board, with its real background
    win.key("ctrl+s")
    s = win.wait(lambda s: s["saved"], 10, "saved")
    saved = np.asarray(PILImage.open(s["saved"]).convert("RGBA"))
    assert Path(s["saved"]).parent == win.save_dir and Path(s["saved"]).name.startswith("p2pboard-")
    assert np.array_equal(saved, px)
    assert saved[..., 3].min() == 255 and tuple(saved[5, 5]) == (255, 255, 255, 255)


def test_two_windows_and_a_late_joiner_converge(setup, tmp_path):
    make_window, make_peer = setup
    a = make_window("alice", geometry=(0, 0, 800, 560))
    b = make_window("bob", geometry=(800, 0, 800, 560))
    # (keys go to the focused window; without a window manager that is the last one
    # mapped, so the brush is set through the control file here)
    a.command("brush 2 12")
    a.wait(lambda s: s["width"] == 12, 5, "brush width 12")
    a.drag([(80, 80), (140, 150), (220, 190), (300, 200), (400, 160), (500, 120)])
    b.command("brush 3 8")
    b.wait(lambda s: s["width"] == 8, 5, "brush width 8")
    b.drag([(100, 300), (200, 340), (300, 350), (420, 310), (560, 250)])
    b.command("brush 6 6")
    b.wait(lambda s: s["width"] == 6, 5, "brush width 6")
    b.drag([(330, 60), (380, 90), (330, 120), (380, 150)])
    late = make_peer("late")
    r = late.sync(20)
    end = time.monotonic() + 20
    while time.monotonic() < end and not (a.state()["digest"] == b.state()["digest"] == r["digest"]
                                          and a.state()["peers"] == b.state()["peers"] == 2):
        r = late.sync(10)
        time.sleep(0.2)
    assert a.state()["digest"] == b.state()["digest"] == r["digest"]
    assert a.state()["peers"] == 2 and "3 people" in a.state()["title"]

    # the screenshot for the README: two windows, strokes, the people list, a cursor
    late.send("cursor 420 260")
    late.expect("cursor", 5)
    x, y = b.screen_point(250, 180)
    b.xdo("mousemove", str(x), str(y))
    time.sleep(1.0)
    from PIL import ImageGrab
    shot = ImageGrab.grab(xdisplay=a.display).crop((0, 0, 1600, 560))
    assert "3 people" in b.state()["title"]
    shot.save(tmp_path / "screenshot.png")
    if os.environ.get("P2PBOARD_UPDATE_SCREENSHOT"):
        shutil.copy(tmp_path / "screenshot.png", ROOT / "docs" / "screenshot.png")
    assert np.asarray(shot).std() > 10


def test_no_network_at_all_is_said_in_the_window(setup, tmp_path):
    make_window, _ = setup
    # A fresh network namespace of its own: not even loopback is up, no multicast route.
    win = make_window("offline", args=(), prefix=("unshare", "-n"), joined=False)
    s = win.wait(lambda s: s.get("popup") == "network", 30, "showing the network error")
    assert s["popup_title"] == "Cannot join the board"
    assert "cannot join" in s["error"] and "239.255.80.80" in s["error"], s["error"]


def test_a_wrong_interface_offers_the_others_and_picking_one_joins(setup, tmp_path):
    make_window, make_peer = setup
    win = make_window("wrong-iface", args=("--iface", "198.51.100.7"), joined=False)
    s = win.wait(lambda s: s.get("popup") == "network", 30, "showing the network error")
    assert "198.51.100.7" in s["error"] and "lo 127.0.0.1" in s["error"], s["error"]
    win.command("iface 127.0.0.1")  # what the dialog's "lo 127.0.0.1" button does
    win.wait(lambda s: s.get("digest") is not None and not s.get("joining"), 30, "joined")
    peer = make_peer()
    synced_digest(win, peer)
    assert "127.0.0.1" in win.state()["status"]


def test_a_peer_with_another_canvas_size_is_reported_in_the_window(setup, tmp_path):
    make_window, _ = setup
    win = make_window()
    big = Peer("big-canvas", win_port(win), size="800x600")
    try:
        s = win.wait(lambda s: s.get("popup") == "message", 30, "reporting the size")
        assert s["popup_title"] == "Different canvas size"
    finally:
        big.quit()


def test_the_peer_list_shows_the_worse_of_its_data_loss_and_the_loss_it_reports():
    """A peer that never draws has no data of its own to lose: the loss it reports in its
    session messages is what shows a bad link to it."""
    require_display_tools()
    from p2pboard.api import PeerInfo
    from p2pboard.ui.app import link_health

    quiet_but_lossy = PeerInfo(1, "a", (0, 0, 0, 255), 0.0, False, 0.002, 0.12)
    assert link_health(quiet_but_lossy) == "[color=c62828]loss 12.0% · lag 1.0 ms[/color]"
    drawing = PeerInfo(2, "b", (0, 0, 0, 255), 0.03, False, 0.002, 0.0)
    assert link_health(drawing) == "[color=b26a00]loss 3.0% · lag 1.0 ms[/color]"
    fine = PeerInfo(3, "c", (0, 0, 0, 255), 0.0, False, 0.002, 0.001)
    assert link_health(fine) == "loss 0.1% · lag 1.0 ms"
