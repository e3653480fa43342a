"""Test-wide setup: no test reads or writes the user's real folders.

Peers started by the tests (headless peers, windows) autosave by default: their saved
boards go to a data folder private to this test run, deleted at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_home = tempfile.mkdtemp(prefix="p2pboard-test-data-")
os.environ["XDG_DATA_HOME"] = _home
os.environ.setdefault("P2PBOARD_SAVE_DIR", _home)


def pytest_unconfigure(config):
    shutil.rmtree(_home, ignore_errors=True)
