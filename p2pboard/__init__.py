"""p2pboard: a serverless whiteboard for a local network, over UDP multicast.

The public API is :func:`open_board` (see README.md); the layers are described in
docs/PROTOCOL.md and at the top of each module. Importing the package is cheap: the API
and the network edge load on first use, so ``import p2pboard.wire`` pulls in no sockets.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "open_board": "api", "start_board": "api", "Board": "api", "PeerInfo": "api",
    "Stroke": "api", "Config": "config", "ConfigError": "config", "BACKGROUND": "ops",
}
__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'p2pboard' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value
