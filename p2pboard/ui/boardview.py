"""The board on screen: one texture, updated once per frame where the board changed.

Remote and local drawing both land in the board (:mod:`p2pboard.board`); every frame the
view asks it for the dirty rectangle and blits just that part of the pixels into one
RGBA texture. No Kivy instruction is created per operation, so a thousand remote strokes
cost one blit. The logical canvas keeps its size; the view fits it to the widget, and
the mouse wheel zooms around the pointer, the right or middle button pans. The texture
is flipped vertically once, so board row 0 (the top) is buffer row 0.
"""

from __future__ import annotations

import time

import numpy as np
from kivy.core.text import Label as CoreLabel
from kivy.graphics import Color, InstructionGroup, Line, Rectangle, Triangle
from kivy.graphics.texture import Texture
from kivy.properties import NumericProperty
from kivy.uix.widget import Widget

CURSOR_TTL = 5.0  # seconds a remote cursor stays without moving


class BoardView(Widget):
    scale = NumericProperty(1.0)

    def __init__(self, app, **kw) -> None:
        super().__init__(**kw)
        self.app = app
        self.board = None
        self._fit = True
        self._ox = self._oy = 0.0
        self._stroke = None
        self._line_start = None
        self._pan = None
        self._cursors: dict[int, tuple[float, float, float]] = {}
        self._labels: dict[tuple[str, tuple], object] = {}
        self._last_cursor_sent = 0.0
        self.frame_times: list[float] = []  # seconds of work per frame (blit, cursors)
        self.frame_gaps: list[float] = []  # seconds between frames
        self._last_frame = None
        self._cursor_key = None
        with self.canvas:
            Color(0.82, 0.84, 0.87, 1)
            self._bg = Rectangle(pos=self.pos, size=self.size)
            Color(1, 1, 1, 1)
            self._rect = Rectangle()
        self._overlay = InstructionGroup()
        self._preview = InstructionGroup()
        self.canvas.after.add(self._preview)
        self.canvas.after.add(self._overlay)
        self.bind(pos=self._relayout, size=self._relayout)

    # ------------------------------------------------------------------ board

    def attach(self, board) -> None:
        self.board = board
        w, h = board.size
        tex = Texture.create(size=(w, h), colorfmt="rgba")
        tex.flip_vertical()
        tex.mag_filter = "nearest"
        self._tex = tex
        self._rect.texture = tex
        board.engine.board.take_dirty()
        self._blit(0, 0, w, h)
        self._relayout()

    def _blit(self, x0: int, y0: int, x1: int, y1: int) -> None:
        px = self.board.pixels
        buf = np.ascontiguousarray(px[y0:y1, x0:x1]).tobytes()
        self._tex.blit_buffer(buf, pos=(x0, y0), size=(x1 - x0, y1 - y0), colorfmt="rgba",
                              bufferfmt="ubyte")

    def refresh(self) -> None:
        """Once per frame: copy what changed into the texture, redraw cursors."""
        if self.board is None:
            return
        t0 = time.perf_counter()
        if self._last_frame is not None:
            self.frame_gaps.append(t0 - self._last_frame)
            del self.frame_gaps[:-600]
        self._last_frame = t0
        d = self.board.engine.board.take_dirty()
        if d is not None:
            self._blit(*d)
            self.canvas.ask_update()
        self._draw_cursors()
        self.frame_times.append(time.perf_counter() - t0)
        del self.frame_times[:-600]

    # ------------------------------------------------------------------ geometry

    def _relayout(self, *_) -> None:
        self._bg.pos, self._bg.size = self.pos, self.size
        if self.board is None:
            return
        w, h = self.board.size
        if self._fit:
            s = min(self.width / w, self.height / h) if w and h else 1.0
            self.scale = max(s, 0.05)
            self._ox = self.x + (self.width - w * self.scale) / 2
            self._oy = self.y + (self.height - h * self.scale) / 2
        self._rect.pos = (self._ox, self._oy)
        self._rect.size = (w * self.scale, h * self.scale)

    def to_board(self, wx: float, wy: float) -> tuple[float, float]:
        h = self.board.size[1]
        return (wx - self._ox) / self.scale, (self._oy + h * self.scale - wy) / self.scale

    def to_window(self, bx: float, by: float) -> tuple[float, float]:
        h = self.board.size[1]
        return self._ox + bx * self.scale, self._oy + (h - by) * self.scale

    def zoom(self, factor: float, around: tuple[float, float]) -> None:
        bx, by = self.to_board(*around)
        self._fit = False
        self.scale = min(max(self.scale * factor, 0.05), 32.0)
        h = self.board.size[1]
        self._ox = around[0] - bx * self.scale
        self._oy = around[1] - (h - by) * self.scale
        self._relayout()

    def fit(self) -> None:
        self._fit = True
        self._relayout()

    # ------------------------------------------------------------------ input

    def on_touch_down(self, touch):
        if not self.collide_point(*touch.pos) or self.board is None:
            return super().on_touch_down(touch)
        button = getattr(touch, "button", "left")
        if button in ("scrollup", "scrolldown"):
            self.zoom(1 / 1.15 if button == "scrollup" else 1.15, touch.pos)
            return True
        if button in ("right", "middle"):
            self._pan = touch.pos
            touch.grab(self)
            return True
        touch.grab(self)
        p = self.to_board(*touch.pos)
        if self.app.shift_held():
            self._line_start = p
            self._draw_preview(p, p)
            return True
        self._stroke = self.board.begin_stroke(color=self.app.current_color(),
                                               width=self.app.brush_width)
        self._stroke.add(p)
        return True

    def on_touch_move(self, touch):
        if touch.grab_current is not self:
            self._send_cursor(touch.pos)
            return super().on_touch_move(touch)
        if self._pan is not None:
            dx, dy = touch.x - self._pan[0], touch.y - self._pan[1]
            self._pan = touch.pos
            self._fit = False
            self._ox += dx
            self._oy += dy
            self._relayout()
            return True
        p = self.to_board(*touch.pos)
        if self._line_start is not None:
            self._draw_preview(self._line_start, p)
        elif self._stroke is not None:
            self._stroke.add(p)
        self._send_cursor(touch.pos)
        return True

    def on_touch_up(self, touch):
        if touch.grab_current is not self:
            return super().on_touch_up(touch)
        touch.ungrab(self)
        if self._pan is not None:
            self._pan = None
            return True
        p = self.to_board(*touch.pos)
        if self._line_start is not None:
            self.board.stroke([self._line_start, p], color=self.app.current_color(),
                              width=self.app.brush_width)
            self._line_start = None
            self._preview.clear()
        elif self._stroke is not None:
            self._stroke.add(p)
            self._stroke.end()
            self._stroke = None
        self.app.after_local_change()
        return True

    def _draw_preview(self, a, b) -> None:
        self._preview.clear()
        r, g, bl, al = (c / 255 for c in self.app.current_color())
        self._preview.add(Color(r, g, bl, 0.6))
        self._preview.add(Line(points=[*self.to_window(*a), *self.to_window(*b)],
                               width=max(1.0, self.app.brush_width * self.scale / 2)))

    def on_mouse_pos(self, pos) -> None:
        if self.board is not None and self.collide_point(*pos):
            self._send_cursor(pos)

    def _send_cursor(self, pos) -> None:
        now = time.monotonic()
        if now - self._last_cursor_sent < 0.05:  # at most 20 a second
            return
        self._last_cursor_sent = now
        bx, by = self.to_board(*pos)
        w, h = self.board.size
        if 0 <= bx < w and 0 <= by < h:
            self.board.cursor(bx, by)

    # ------------------------------------------------------------------ cursors

    def cursor_moved(self, peer: int, x: int, y: int, hidden: bool) -> None:
        if hidden:
            self._cursors.pop(peer, None)
        else:
            self._cursors[peer] = (x, y, time.monotonic())

    def forget_cursor(self, peer: int) -> None:
        self._cursors.pop(peer, None)

    def _label(self, text: str, rgb) -> object:
        key = (text, rgb)
        tex = self._labels.get(key)
        if tex is None:
            lab = CoreLabel(text=text, font_size=13, color=(1, 1, 1, 1), bold=True)
            lab.refresh()
            tex = self._labels[key] = lab.texture
            if len(self._labels) > 256:
                self._labels.pop(next(iter(self._labels)))
        return tex

    def _draw_cursors(self) -> None:
        now = time.monotonic()
        peers = self.board.peers
        for pid, (x, y, t) in list(self._cursors.items()):
            if now - t > CURSOR_TTL or pid not in peers:
                del self._cursors[pid]
        # Rebuild the overlay only when something in it changed: touching the canvas makes
        # Kivy redraw the whole window, which is most of a frame's cost.
        key = (tuple((pid, x, y, peers[pid].name, peers[pid].color)
                     for pid, (x, y, _t) in sorted(self._cursors.items())),
               self._ox, self._oy, self.scale)
        if key == self._cursor_key:
            return
        self._cursor_key = key
        g = self._overlay
        g.clear()
        for pid, (x, y, t) in self._cursors.items():
            info = peers[pid]
            rgb = tuple(c / 255 for c in info.color[:3])
            wx, wy = self.to_window(x, y)
            g.add(Color(*rgb, 1))
            g.add(Triangle(points=[wx, wy, wx, wy - 18, wx + 12, wy - 12]))
            tex = self._label(info.name, info.color[:3])
            g.add(Color(*rgb, 0.9))
            g.add(Rectangle(pos=(wx + 10, wy - 34), size=(tex.width + 8, tex.height + 4)))
            g.add(Color(1, 1, 1, 1))
            g.add(Rectangle(texture=tex, pos=(wx + 14, wy - 32), size=tex.size))
