"""Network namespaces for the tests: nothing a test sends can leave the machine.

``scripts/test.sh`` runs the whole suite inside ``unshare -n`` with multicast routed on
``lo`` and sets ``P2PBOARD_IN_NETNS=1``. Tests that open a socket call :func:`require_netns`
first: outside such a namespace they skip with the reason, and under CI they fail, so
nothing is skipped there.

:class:`Lan` (from tests/netlab.py, which has no pytest in it so that scripts/bench.py can
use it too) builds a simulated LAN inside that namespace: hosts as named namespaces
(``ip netns``), each with a veth to one bridge, addresses in 198.18.0.0/24, and helpers
for kernel packet loss, partitions and link rates (TESTBED.md).
"""

from __future__ import annotations

import os

import pytest

from .netlab import Lan, lan_problem, sh  # noqa: F401 - re-exported for the tests


def in_netns() -> bool:
    return os.environ.get("P2PBOARD_IN_NETNS") == "1"


def require_netns() -> None:
    if in_netns():
        return
    msg = "not inside a private network namespace (run scripts/test.sh)"
    if os.environ.get("CI"):
        pytest.fail(msg + ": under CI nothing may be skipped")
    pytest.skip(msg)


_lan_problem: list[str | None] = []  # cached result of lan_problem()


def require_lan() -> None:
    """Named namespaces need real root and the ip and nft tools."""
    require_netns()
    if not _lan_problem:
        _lan_problem.append(lan_problem())
    reason = _lan_problem[0]
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason + ": under CI nothing may be skipped")
        pytest.skip(reason)
