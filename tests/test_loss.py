"""The receiver's loss meter (p2pboard/loss.py): what it counts and the bound it reports."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from p2pboard import loss
from p2pboard.loss import LossMeter


def meter(seen: int, lost: int) -> LossMeter:
    m = LossMeter()
    m.received(seen - lost)
    m.missed(lost)
    return m


def test_too_few_counted_reports_nothing():
    assert meter(loss.MIN_SAMPLES - 1, 10).lower_bound() == 0.0
    assert meter(500, 0).lower_bound() == 0.0


def test_the_bound_is_below_the_rate_and_closes_in_with_more_counted():
    few, many = meter(70, 7), meter(1000, 100)
    assert 0.03 < few.lower_bound() < many.lower_bound() < 0.1
    assert 0.075 < many.lower_bound()
    assert meter(32, 1).lower_bound() < 0.005  # one stray loss: below what authors act on


def test_a_late_datagram_is_not_a_loss():
    m = meter(100, 10)
    m.late()
    assert m.lost == 9 and m.seen == 100
    empty = LossMeter()
    empty.late()
    assert empty.lost == 0


def test_the_window_forgets_old_loss():
    rng = random.Random(1)
    m = LossMeter()
    for _ in range(5000):
        (m.missed if rng.random() < 0.1 else m.received)()
    assert m.seen <= loss.WINDOW
    assert 0.06 < m.lower_bound() <= m.rate < 0.14
    for _ in range(4 * loss.WINDOW):
        m.received()
    assert m.rate < 0.01 and m.lower_bound() < 0.005


@given(st.lists(st.sampled_from(["received", "missed", "late"]), max_size=3000))
def test_the_report_is_a_share_and_never_above_the_rate(ops):
    m = LossMeter()
    for op in ops:
        getattr(m, op)()
    assert 0 <= m.lost <= m.seen <= loss.WINDOW
    assert 0.0 <= m.lower_bound() <= m.rate <= 1.0
    assert 0 <= m.report() <= loss.SCALE
