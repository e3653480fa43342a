"""The whiteboard window: toolbar, board, people, status bar; one asyncio loop for all.

Kivy runs on the same asyncio loop as the network (``App.async_run``), so the socket is
served between frames and nothing hands data across threads. Once per frame the board
view blits the board's dirty rectangle into its texture (see :mod:`.boardview`); the
status bar, title and people list refresh four times a second.

Keys: Ctrl+Z undo, Ctrl+Shift+Z or Ctrl+Y redo, Ctrl+S save as PNG, Ctrl+Delete clear
(asks first; Enter confirms, Escape cancels), P pen, E eraser, 1 to 8 palette colours,
[ and ] brush width, 0 fit the board to the window. Shift while drawing draws a straight line.

For tests and demos, ``P2PBOARD_UI_STATE=FILE`` makes the app write its state (digest,
peers, sync, title, last saved file, open dialog) as JSON to FILE a few times a second,
``P2PBOARD_UI_CONTROL=FILE`` makes it run commands appended to FILE (``drop PATH X Y``
as a drag-and-drop at window point X, Y; ``brush N WIDTH`` palette colour N;
``screenshot PATH``; ``quit``), and
``P2PBOARD_UI_GEOMETRY=X,Y,W,H`` places the window.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path

import numpy as np

_geometry = os.environ.get("P2PBOARD_UI_GEOMETRY")
if _geometry:
    from kivy.config import Config as KivyConfig

    _x, _y, _w, _h = (int(v) for v in _geometry.split(","))
    KivyConfig.set("graphics", "position", "custom")
    KivyConfig.set("graphics", "left", str(_x))
    KivyConfig.set("graphics", "top", str(_y))
    KivyConfig.set("graphics", "width", str(_w))
    KivyConfig.set("graphics", "height", str(_h))
KIVY_CONFIG_DONE = True

from kivy.app import App  # noqa: E402
from kivy.clock import Clock  # noqa: E402
from kivy.core.window import Window  # noqa: E402
from kivy.graphics import Color, Rectangle  # noqa: E402
from kivy.metrics import dp  # noqa: E402
from kivy.uix.boxlayout import BoxLayout  # noqa: E402
from kivy.uix.button import Button  # noqa: E402
from kivy.uix.colorpicker import ColorPicker  # noqa: E402
from kivy.uix.filechooser import FileChooserListView  # noqa: E402
from kivy.uix.label import Label  # noqa: E402
from kivy.uix.popup import Popup  # noqa: E402
from kivy.uix.scrollview import ScrollView  # noqa: E402
from kivy.uix.slider import Slider  # noqa: E402
from kivy.uix.stacklayout import StackLayout  # noqa: E402
from kivy.uix.textinput import TextInput  # noqa: E402
from kivy.uix.togglebutton import ToggleButton  # noqa: E402
from kivy.uix.widget import Widget  # noqa: E402

from ..cli import open_with_autosave  # noqa: E402
from ..config import Config  # noqa: E402
from ..cli import other_board_text  # noqa: E402
from ..events import (CursorMoved, OtherBoard, PeerJoined, PeerLeft,  # noqa: E402
                      SizeMismatch, VersionMismatch)
from ..net.sockets import MulticastSetupError, list_ipv4_interfaces  # noqa: E402
from ..ops import BACKGROUND  # noqa: E402
from .boardview import BoardView  # noqa: E402

log = logging.getLogger("p2pboard.ui")

PALETTE = [(20, 20, 20, 255), (220, 50, 47, 255), (38, 139, 210, 255), (133, 153, 0, 255),
           (181, 137, 0, 255), (211, 54, 130, 255), (108, 113, 196, 255), (42, 161, 152, 255)]
IMAGE_TYPES = ("*.png", "*.jpg", "*.jpeg", "*.PNG", "*.JPG", "*.JPEG")


def default_save_dir() -> Path:
    env = os.environ.get("P2PBOARD_SAVE_DIR")
    if env:
        return Path(env)
    pictures = os.environ.get("XDG_PICTURES_DIR")
    for cand in (pictures, Path.home() / "Pictures", Path.home()):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return Path.cwd()


def _swatch(widget, rgba) -> None:
    with widget.canvas.before:
        widget._swatch_color = Color(*(c / 255 for c in rgba))
        widget._swatch_rect = Rectangle(pos=widget.pos, size=widget.size)
    widget.bind(pos=lambda w, v: setattr(w._swatch_rect, "pos", v),
                size=lambda w, v: setattr(w._swatch_rect, "size", v))


class LockIcon(Widget):
    """A padlock, closed on a passphrase board and open on an open one."""

    def __init__(self, locked: bool, **kw) -> None:
        super().__init__(**kw)
        self.locked = locked
        self.bind(pos=self._draw, size=self._draw)

    def _draw(self, *_) -> None:
        from kivy.graphics import Line

        self.canvas.clear()
        w = dp(12)
        x = self.center_x - w / 2
        y = self.center_y - dp(7)
        color = (0.13, 0.45, 0.22, 1) if self.locked else (0.55, 0.55, 0.55, 1)
        with self.canvas:
            Color(*color)
            Rectangle(pos=(x, y), size=(w, dp(9)))
            # the shackle: closed over the body, or swung open to the right
            sx = x + dp(2) if self.locked else x + dp(5)
            Line(points=[sx, y + dp(9), sx, y + dp(12), sx + dp(1.5), y + dp(14),
                         sx + dp(6.5), y + dp(14), sx + dp(8), y + dp(12),
                         sx + dp(8), y + dp(9 if self.locked else 11)], width=dp(1.3))


def link_health(p) -> str:
    """One line on the link to a peer, red or amber when it is bad (Kivy markup)."""
    if p.joining:
        return "joining…"
    lag = "lag …" if p.lag is None else f"lag {1000 * p.lag:.1f} ms"
    # What we miss of its drawing, or what it says it misses of everyone's, the worse.
    lost = max(p.loss_rate, p.reported_loss)
    text = f"loss {100 * lost:.1f}% · {lag}"
    # People notice drawing arriving ~100 ms late; loss is repaired, but heavy loss slows it.
    bad = lost >= 0.10 or (p.lag or 0) >= 0.2
    poor = lost >= 0.02 or (p.lag or 0) >= 0.05
    if bad:
        return f"[color=c62828]{text}[/color]"
    if poor:
        return f"[color=b26a00]{text}[/color]"
    return text


class BoardApp(App):
    title = "p2pboard"

    def __init__(self, config: Config, save: str | None = None, autosave: bool = False,
                 data_dir: str | None = None, **kw) -> None:
        super().__init__(**kw)
        self.cfg = config
        self.save_on_exit = save
        self.autosave = autosave
        self.data_dir = data_dir
        self.board = None
        self.color = PALETTE[0]
        self.brush_width = 4
        self.eraser = False
        self.show_counters = False
        self.popup: Popup | None = None
        self.popup_kind = ""
        self.last_saved: Path | None = None
        self.error = ""
        self._warned: set = set()
        self._keys_down: set[int] = set()
        self._control_pos = 0
        self._state_file = os.environ.get("P2PBOARD_UI_STATE")
        self._control_file = os.environ.get("P2PBOARD_UI_CONTROL")

    # ------------------------------------------------------------------ layout

    def build(self):
        root = BoxLayout(orientation="vertical")
        root.add_widget(self._toolbar())
        middle = BoxLayout()
        self.view = BoardView(self)
        middle.add_widget(self.view)
        middle.add_widget(self._side_panel())
        root.add_widget(middle)
        self.status = Label(size_hint_y=None, height=dp(26), halign="left", valign="middle",
                            color=(0.15, 0.15, 0.15, 1), font_size="13sp", markup=True)
        self.status.bind(size=lambda w, v: setattr(w, "text_size", v))
        _swatch(self.status, (236, 239, 241, 255))
        root.add_widget(self.status)
        Window.clearcolor = (0.93, 0.94, 0.95, 1)
        Window.bind(on_key_down=self._on_key_down, on_key_up=self._on_key_up,
                    on_drop_file=self._on_drop_file, mouse_pos=self._on_mouse_pos,
                    on_request_close=self._on_request_close)
        Clock.schedule_interval(lambda dt: self.view.refresh(), 0)
        Clock.schedule_interval(lambda dt: self._refresh_panels(), 0.25)
        if self._control_file:
            Clock.schedule_interval(lambda dt: self._poll_control(), 0.1)
        return root

    def _toolbar(self):
        # A StackLayout wraps to a second row when the window is narrow.
        bar = StackLayout(size_hint_y=None, spacing=dp(3), padding=dp(4))
        bar.bind(minimum_height=bar.setter("height"))
        _swatch(bar, (250, 250, 250, 255))
        self.palette_buttons = []
        for c in PALETTE:
            b = Button(size_hint=(None, None), size=(dp(30), dp(36)), background_normal="",
                       background_color=[v / 255 for v in c])
            b.bind(on_release=lambda _b, c=c: self.set_color(c))
            bar.add_widget(b)
        custom = Button(text="Colour…", size_hint=(None, None), size=(dp(70), dp(36)))
        custom.bind(on_release=lambda *_: self.open_color_picker())
        bar.add_widget(custom)
        self.current_swatch = Widget(size_hint=(None, None), size=(dp(26), dp(36)))
        _swatch(self.current_swatch, self.color)
        bar.add_widget(self.current_swatch)
        bar.add_widget(Label(text="Width", size_hint=(None, None), size=(dp(44), dp(36)),
                             color=(0.2, 0.2, 0.2, 1)))
        self.width_slider = Slider(min=1, max=64, step=1, value=self.brush_width,
                                   size_hint=(None, None), size=(dp(110), dp(36)))
        self.width_label = Label(text=str(self.brush_width), size_hint=(None, None),
                                 size=(dp(26), dp(36)), color=(0.2, 0.2, 0.2, 1))
        self.width_slider.bind(value=lambda _s, v: self._set_width(int(v)))
        bar.add_widget(self.width_slider)
        bar.add_widget(self.width_label)
        self.pen_btn = ToggleButton(text="Pen", group="tool", state="down",
                                    size_hint=(None, None), size=(dp(50), dp(36)))
        self.eraser_btn = ToggleButton(text="Eraser", group="tool", size_hint=(None, None),
                                       size=(dp(62), dp(36)))
        self.pen_btn.bind(on_release=lambda *_: self.set_tool(False))
        self.eraser_btn.bind(on_release=lambda *_: self.set_tool(True))
        bar.add_widget(self.pen_btn)
        bar.add_widget(self.eraser_btn)
        for text, fn, w in (("Undo", self.undo, 54), ("Redo", self.redo, 54),
                            ("Clear…", self.ask_clear, 62), ("Image…", self.open_image_chooser, 66),
                            ("Save PNG", self.save_png, 80), ("Fit", lambda: self.view.fit(), 40)):
            b = Button(text=text, size_hint=(None, None), size=(dp(w), dp(36)))
            b.bind(on_release=lambda _b, fn=fn: fn())
            bar.add_widget(b)
            if text == "Undo":
                self.undo_btn = b
            elif text == "Redo":
                self.redo_btn = b
        protected = self.cfg.key is not None
        self.lock_icon = LockIcon(locked=protected, size_hint=(None, None),
                                  size=(dp(18), dp(36)))
        bar.add_widget(self.lock_icon)
        self.lock_label = Label(
            text=f"protected · key {self.cfg.key.key_id}" if protected else "open board",
            size_hint=(None, None), size=(dp(150) if protected else dp(80), dp(36)),
            color=(0.13, 0.4, 0.2, 1) if protected else (0.35, 0.35, 0.35, 1),
            font_size="12sp", halign="left", valign="middle")
        self.lock_label.bind(size=lambda w, v: setattr(w, "text_size", v))
        bar.add_widget(self.lock_label)
        return bar

    def _side_panel(self):
        side = BoxLayout(orientation="vertical", size_hint_x=None, width=dp(230),
                         padding=dp(6), spacing=dp(4))
        _swatch(side, (246, 247, 249, 255))
        side.add_widget(Label(text="[b]You[/b]", markup=True, size_hint_y=None, height=dp(22),
                              color=(0.2, 0.2, 0.2, 1), halign="left"))
        self.name_input = TextInput(text=self.cfg.name, multiline=False, size_hint_y=None,
                                    height=dp(32))
        self.name_input.bind(on_text_validate=lambda w: self.rename(w.text),
                             focus=lambda w, f: None if f else self.rename(w.text))
        side.add_widget(self.name_input)
        side.add_widget(Label(text="[b]People here[/b]", markup=True, size_hint_y=None,
                              height=dp(24), color=(0.2, 0.2, 0.2, 1)))
        self.peer_box = BoxLayout(orientation="vertical", size_hint_y=None, spacing=dp(2))
        self.peer_box.bind(minimum_height=self.peer_box.setter("height"))
        scroll = ScrollView()
        scroll.add_widget(self.peer_box)
        side.add_widget(scroll)
        self.counters = Label(text="", size_hint_y=None, height=0, font_size="11sp",
                              color=(0.25, 0.25, 0.25, 1), halign="left", valign="top")
        self.counters.bind(size=lambda w, v: setattr(w, "text_size", v))
        side.add_widget(self.counters)
        net = ToggleButton(text="Network counters", size_hint_y=None, height=dp(30))
        net.bind(state=lambda _b, s: self.toggle_counters(s == "down"))
        side.add_widget(net)
        return side

    # ------------------------------------------------------------------ lifecycle

    async def main(self) -> int:
        connect = asyncio.ensure_future(self._connect(self.cfg))
        await self.async_run(async_lib="asyncio")
        connect.cancel()
        if self.board is not None:
            await self.board.aclose()
            if self.save_on_exit:
                self.board.save_png(self.save_on_exit)
                log.info("saved the board to %s", self.save_on_exit)
        return 0

    async def _connect(self, cfg: Config) -> None:
        await asyncio.sleep(0)  # let the window open first
        try:
            board = await open_with_autosave(cfg, self.autosave, self.data_dir)
        except MulticastSetupError as err:
            self.show_network_error(str(err), err.interfaces)
            return
        except OSError as err:
            self.show_network_error(f"no network: {err}", list_ipv4_interfaces())
            return
        self.cfg = cfg
        self.board = board
        board.on_event(self._on_event)
        self.view.attach(board)
        self.error = ""
        if board.autosave_problem:
            self._message("The saved board could not be used", board.autosave_problem)
        elif board.restored_from is not None:
            self.flash(f"restored the board saved in {board.restored_from}")
        self._refresh_panels()

    def _on_request_close(self, *_):
        return False

    # ------------------------------------------------------------------ actions

    def current_color(self):
        return BACKGROUND if self.eraser else self.color

    def shift_held(self) -> bool:
        return bool({303, 304} & self._keys_down)

    def set_color(self, c) -> None:
        self.color = tuple(int(v) for v in c)
        self.current_swatch._swatch_color.rgba = [v / 255 for v in self.color]
        self.set_tool(False)

    def _set_width(self, w: int) -> None:
        self.brush_width = max(1, min(64, w))
        self.width_label.text = str(self.brush_width)

    def set_tool(self, eraser: bool) -> None:
        self.eraser = eraser
        self.pen_btn.state = "normal" if eraser else "down"
        self.eraser_btn.state = "down" if eraser else "normal"

    def undo(self) -> None:
        if self.board is not None:
            self.board.undo()

    def redo(self) -> None:
        if self.board is not None:
            self.board.redo()

    def after_local_change(self) -> None:
        self._refresh_buttons()

    def rename(self, name: str) -> None:
        name = name.strip()[:32]
        if self.board is None or not name or name == self.board.engine.config.name:
            return
        eng = self.board.engine
        eng.config = dataclasses.replace(eng.config, name=name)
        self.cfg = dataclasses.replace(self.cfg, name=name)
        eng.probe(self.board._now())  # tell the others now, not at the next session message
        self.board._pump()

    def toggle_counters(self, on: bool) -> None:
        self.show_counters = on
        self.counters.height = dp(150) if on else 0
        self._refresh_panels()

    def ask_clear(self) -> None:
        if self.board is None:
            return
        n = len(self.board.peers) + 1
        people = "just you" if n == 1 else f"{n} people"
        box = BoxLayout(orientation="vertical", padding=dp(10), spacing=dp(10))
        box.add_widget(Label(text=f"Clear the board for everyone?\n{people} on this board "
                                  "will see it cleared.\nYou can undo it (Ctrl+Z).",
                             halign="center"))
        row = BoxLayout(size_hint_y=None, height=dp(40), spacing=dp(10))
        cancel = Button(text="Cancel")
        ok = Button(text="Clear board", background_color=(0.9, 0.3, 0.3, 1))
        row.add_widget(cancel)
        row.add_widget(ok)
        box.add_widget(row)
        self._open_popup("clear", "Clear board", box, (dp(380), dp(220)))
        cancel.bind(on_release=lambda *_: self.close_popup())
        ok.bind(on_release=lambda *_: self.confirm_clear())

    def confirm_clear(self) -> None:
        self.close_popup()
        if self.board is not None:
            self.board.clear()
            self._refresh_buttons()

    def save_png(self) -> Path | None:
        if self.board is None:
            return None
        folder = default_save_dir()
        path = folder / f"p2pboard-{datetime.now():%Y%m%d-%H%M%S}.png"
        i = 1
        while path.exists():
            path = folder / f"p2pboard-{datetime.now():%Y%m%d-%H%M%S}-{i}.png"
            i += 1
        try:
            self.board.save_png(path)
        except OSError as err:
            self.flash(f"could not save: {err}")
            return None
        self.last_saved = path
        self.flash(f"saved {path}")
        return path

    def paste_file(self, path: str, at: tuple[float, float] | None = None) -> bool:
        """Insert an image file; ``at`` is its centre in board coordinates."""
        if self.board is None:
            return False
        try:
            from PIL import Image as PILImage

            with PILImage.open(path) as im:
                im.thumbnail(self.board.size)  # never larger than the board
                arr = np.asarray(im.convert("RGBA"))
        except (OSError, ValueError) as err:
            self.flash(f"cannot read {Path(path).name}: {err}")
            return False
        w, h = self.board.size
        cx, cy = at if at is not None else (w / 2, h / 2)
        x, y = int(cx - arr.shape[1] / 2), int(cy - arr.shape[0] / 2)
        self.board.paste(arr, at=(x, y))
        self._refresh_buttons()
        self.flash(f"inserted {Path(path).name}")
        return True

    def open_image_chooser(self) -> None:
        box = BoxLayout(orientation="vertical", spacing=dp(6))
        chooser = FileChooserListView(path=str(Path.home()), filters=list(IMAGE_TYPES))
        box.add_widget(chooser)
        row = BoxLayout(size_hint_y=None, height=dp(40), spacing=dp(10))
        cancel, ok = Button(text="Cancel"), Button(text="Insert")
        row.add_widget(cancel)
        row.add_widget(ok)
        box.add_widget(row)

        def insert(*_):
            if chooser.selection:
                self.close_popup()
                self.paste_file(chooser.selection[0])

        ok.bind(on_release=insert)
        cancel.bind(on_release=lambda *_: self.close_popup())
        chooser.bind(on_submit=insert)
        self._open_popup("image", "Insert an image (PNG or JPEG)", box, (dp(640), dp(480)))

    def open_color_picker(self) -> None:
        box = BoxLayout(orientation="vertical", spacing=dp(6))
        picker = ColorPicker(color=[v / 255 for v in self.color])
        box.add_widget(picker)
        ok = Button(text="Use this colour", size_hint_y=None, height=dp(40))
        box.add_widget(ok)
        ok.bind(on_release=lambda *_: (self.set_color([round(v * 255) for v in picker.color]),
                                       self.close_popup()))
        self._open_popup("colour", "Custom colour", box, (dp(520), dp(520)))

    def show_network_error(self, message: str, interfaces) -> None:
        self.error = message
        box = BoxLayout(orientation="vertical", padding=dp(10), spacing=dp(6))
        box.add_widget(Label(text=message, halign="center", text_size=(dp(440), None)))
        if interfaces:
            box.add_widget(Label(text="Use the network of one of these interfaces:",
                                 size_hint_y=None, height=dp(24)))
            for name, addr in interfaces:
                b = Button(text=f"{name}  {addr}", size_hint_y=None, height=dp(34))
                b.bind(on_release=lambda _b, a=addr: self._retry_with(a))
                box.add_widget(b)
        quit_btn = Button(text="Quit", size_hint_y=None, height=dp(34))
        quit_btn.bind(on_release=lambda *_: self.stop())
        box.add_widget(quit_btn)
        self._open_popup("network", "Cannot join the board", box,
                         (dp(500), dp(200 + 40 * len(interfaces))))

    def _retry_with(self, addr: str) -> None:
        self.close_popup()
        asyncio.ensure_future(self._connect(dataclasses.replace(self.cfg, iface=addr)))

    def _open_popup(self, kind: str, title: str, content, size) -> None:
        self.close_popup()
        self.popup = Popup(title=title, content=content, size_hint=(None, None), size=size,
                           auto_dismiss=False)
        self.popup_kind = kind
        self.popup.open()

    def close_popup(self) -> None:
        if self.popup is not None:
            self.popup.dismiss()
        self.popup = None
        self.popup_kind = ""

    def flash(self, text: str) -> None:
        self._flash = (text, time.monotonic())
        self._refresh_panels()

    # ------------------------------------------------------------------ events

    def _on_event(self, ev) -> None:
        if isinstance(ev, CursorMoved):
            self.view.cursor_moved(ev.peer, ev.x, ev.y, ev.hidden)
        elif isinstance(ev, PeerLeft):
            self.view.forget_cursor(ev.peer)
        elif isinstance(ev, SizeMismatch) and ("size", ev.peer) not in self._warned:
            self._warned.add(("size", ev.peer))
            w, h = self.board.size
            self._message("Different canvas size",
                          f"{ev.name or 'A peer'} uses a {ev.size[0]}x{ev.size[1]} canvas on "
                          f"this board; this window uses {w}x{h}.\nIts drawing is not shown. "
                          "Start both with the same --size.")
        elif isinstance(ev, VersionMismatch) and ("version", ev.peer) not in self._warned:
            self._warned.add(("version", ev.peer))
            self._message("Different p2pboard version",
                          f"A peer speaks protocol version {ev.version}; this one speaks a "
                          "different version.\nIts drawing is ignored: update both to the "
                          "same p2pboard.")
        elif isinstance(ev, OtherBoard) and ("other", ev.kind, ev.key_id) not in self._warned:
            self._warned.add(("other", ev.kind, ev.key_id))
            self._message("Another board on this address", other_board_text(ev))
        elif isinstance(ev, PeerJoined):
            self._refresh_panels()

    def _message(self, title: str, text: str) -> None:
        box = BoxLayout(orientation="vertical", padding=dp(10), spacing=dp(10))
        box.add_widget(Label(text=text, halign="center", text_size=(dp(420), None)))
        ok = Button(text="OK", size_hint_y=None, height=dp(38))
        ok.bind(on_release=lambda *_: self.close_popup())
        box.add_widget(ok)
        self._open_popup("message", title, box, (dp(480), dp(230)))

    # ------------------------------------------------------------------ keys, drops, mouse

    def _on_key_down(self, _win, key, scancode, codepoint, modifiers):
        self._keys_down.add(key)
        ctrl = "ctrl" in modifiers or "meta" in modifiers
        shift = "shift" in modifiers
        if self.popup is not None:
            if key == 27:  # Escape
                self.close_popup()
                return True
            if key in (13, 271) and self.popup_kind == "clear":
                self.confirm_clear()
                return True
            return False
        if self.name_input.focus:
            return False
        if ctrl and codepoint == "z":
            self.redo() if shift else self.undo()
        elif ctrl and codepoint == "y":
            self.redo()
        elif ctrl and codepoint == "s":
            self.save_png()
        elif ctrl and key in (127, 8):  # Delete, Backspace
            self.ask_clear()
        elif not ctrl and codepoint == "e":
            self.set_tool(True)
        elif not ctrl and codepoint == "p":
            self.set_tool(False)
        elif not ctrl and codepoint == "0":
            self.view.fit()
        elif not ctrl and codepoint and codepoint in "12345678":
            self.set_color(PALETTE[int(codepoint) - 1])
        elif not ctrl and (codepoint in ("[", "]") or key in (91, 93)):
            up = codepoint == "]" or key == 93
            self.width_slider.value = max(1, min(64, self.brush_width + (2 if up else -2)))
        else:
            return False
        self._refresh_buttons()
        return True

    def _on_key_up(self, _win, key, *args):
        self._keys_down.discard(key)
        return False

    def _on_drop_file(self, _win, filename, x=None, y=None, *args):
        path = filename.decode() if isinstance(filename, bytes) else str(filename)
        if x is None or y is None:
            x, y = Window.mouse_pos
        else:
            y = Window.height - y  # SDL reports drop positions from the top
        self.drop(path, x, y)

    def drop(self, path: str, wx: float, wy: float) -> bool:
        if self.board is None:
            return False
        bx, by = self.view.to_board(wx, wy)
        return self.paste_file(path, (bx, by))

    def _on_mouse_pos(self, _win, pos):
        self.view.on_mouse_pos(pos)

    # ------------------------------------------------------------------ periodic

    def _refresh_buttons(self) -> None:
        if self.board is None:
            return
        self.undo_btn.disabled = not self.board.can_undo
        self.redo_btn.disabled = not self.board.can_redo

    def _refresh_panels(self) -> None:
        b = self.board
        cfg = self.cfg
        where = f"{cfg.group}:{cfg.port} on {cfg.iface or 'the default interface'}"
        if b is None:
            self.status.text = f"  Board {where} · " + (
                f"[color=aa2222]{self.error}[/color]" if self.error else "joining…")
            self.title = f"p2pboard — {cfg.group}:{cfg.port}"
            self._write_state()
            return
        n = len(b.peers) + 1
        state = "joining…" if b.joining else "in sync" if b.synced() else "catching up…"
        silent = b.silent_for
        failed = b.edge.last_send_error if b.edge is not None else None
        if failed is not None and b._now() - failed[0] < 3.0:
            state = (f"[color=c62828]cannot send: {failed[1]} (no network, or no route for "
                     f"multicast on this interface)[/color]")
        elif b.rejoined_at is not None and silent >= b.engine.timers.silence_rejoin and (
                b.engine._peers):
            # Peers were here and have gone quiet together: the network, not them.
            state = (f"[color=c62828]no one heard for {silent:.0f} s; re-joined the "
                     f"group[/color]")
        flash = getattr(self, "_flash", None)
        extra = ""
        if flash and time.monotonic() - flash[1] < 8:
            extra = f" · [b]{flash[0]}[/b]"
        people = "just you" if n == 1 else f"{n} people"
        self.status.text = f"  Board {where} · {people} · {state}{extra}"
        self.title = f"p2pboard — {cfg.name} — {cfg.group}:{cfg.port} — {people}"
        self._refresh_buttons()
        self._refresh_peers()
        if self.show_counters:
            s = b.stats
            rejected = sum(v for k, v in s.items() if k.startswith("rejected_"))
            ft = self.view.frame_times[-120:]
            self.counters.text = (
                f"sent {s['datagrams_sent']} dgrams, {s['bytes_sent'] // 1024} KiB\n"
                f"received {s['datagrams_received']} dgrams, {s['bytes_received'] // 1024} KiB\n"
                f"gaps {s['gaps']}, recovered {s['recovered']}, missing {s['missing']}\n"
                f"NACKs sent {s['nacks_sent']}, repairs sent {s['repairs_sent']}\n"
                f"rejected {rejected}\n"
                f"frame work {1000 * max(ft, default=0):.1f} ms max")
        self._write_state()

    def _refresh_peers(self) -> None:
        """The people list. Rows are rebuilt only when who is here changes; the link health
        of each (loss and lag, coloured when bad) is updated in place."""
        peers = sorted(self.board.peers.values(), key=lambda p: (p.name.lower(), p.id))
        key = [(p.id, p.name, p.color) for p in peers] + [(self.cfg.name, self.cfg.color)]
        if key != getattr(self, "_peer_key", None):
            self._peer_key = key
            self._health_labels = {}
            box = self.peer_box
            box.clear_widgets()
            rows = [(0, self.cfg.name + " (you)", self.cfg.color)]
            rows += [(p.id, p.name, p.color) for p in peers]
            for pid, name, color in rows:
                row = BoxLayout(orientation="vertical", size_hint_y=None, height=dp(38))
                top = BoxLayout(spacing=dp(6))
                dot = Widget(size_hint=(None, None), size=(dp(14), dp(14)))
                _swatch(dot, color)
                top.add_widget(dot)
                top.add_widget(Label(text=name, color=(0.1, 0.1, 0.1, 1), halign="left",
                                     valign="middle", shorten=True, text_size=(dp(190), None)))
                row.add_widget(top)
                health = Label(text="", color=(0.4, 0.4, 0.4, 1), font_size="11sp",
                               halign="left", valign="top", markup=True,
                               size_hint_y=None, height=dp(14), text_size=(dp(190), dp(14)),
                               padding=(dp(20), 0))
                row.add_widget(health)
                self._health_labels[pid] = health
                box.add_widget(row)
        for p in peers:
            label = self._health_labels.get(p.id)
            if label is not None:
                label.text = link_health(p)


    def _write_state(self) -> None:
        if not self._state_file:
            return
        b = self.board
        state = dict(title=self.title, popup=self.popup_kind, error=self.error,
                     popup_title=self.popup.title if self.popup is not None else "",
                     status=self.status.text,
                     saved=str(self.last_saved) if self.last_saved else None,
                     eraser=self.eraser, width=self.brush_width)
        if b is not None:
            ft = np.array(self.view.frame_times[-600:] or [0.0]) * 1000
            g = np.array(self.view.frame_gaps[-600:] or [0.0]) * 1000
            from ..net.sockets import socket_drops
            state.update(fps=Clock.get_fps(), frame_work_ms=[float(np.percentile(ft, 50)),
                                                              float(np.percentile(ft, 99)),
                                                              float(ft.max())],
                         frame_gap_ms=[float(np.percentile(g, 50)), float(np.percentile(g, 99)),
                                       float(g.max())],
                         kernel_drops=socket_drops(b.edge.sock) if b.edge else None,
                         gaps=b.stats["gaps"], received=b.stats["datagrams_received"])
            state.update(digest=b.digest(), peers=len(b.peers), synced=b.synced(),
                         joining=b.joining, size=list(b.size),
                         view=[self.view._ox, self.view._oy, self.view.scale],
                         window=[Window.width, Window.height])
        tmp = self._state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self._state_file)

    def _poll_control(self) -> None:
        try:
            with open(self._control_file) as f:
                f.seek(self._control_pos)
                lines = f.readlines()
                self._control_pos = f.tell()
        except OSError:
            return
        for line in lines:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "drop" and len(parts) == 4:
                self.drop(parts[1], float(parts[2]), float(parts[3]))
            elif parts[0] == "brush" and len(parts) == 3:
                self.set_color(PALETTE[int(parts[1]) - 1])
                self.width_slider.value = int(parts[2])
            elif parts[0] == "iface" and len(parts) == 2:  # as the dialog's buttons do
                self._retry_with(parts[1])
            elif parts[0] == "screenshot" and len(parts) == 2:
                Window.screenshot(name=parts[1])
            elif parts[0] == "quit":
                self.stop()


def run(config: Config, save: str | None = None, autosave: bool = False,
        data_dir: str | None = None) -> int:
    """Open the window on ``config``'s board; returns the exit status."""
    return asyncio.run(BoardApp(config, save, autosave, data_dir).main())
