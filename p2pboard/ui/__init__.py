"""The Kivy whiteboard window. Kivy is imported only under this package.

``KIVY_NO_ARGS`` is set before Kivy loads so that Kivy leaves p2pboard's flags alone.
"""

import os

os.environ.setdefault("KIVY_NO_ARGS", "1")
os.environ.setdefault("KIVY_NO_CONSOLELOG", "1")
# Kivy leaves Python's logging alone (p2pboard configures it); its own logger is quieted by
# the command line unless -vv, so that probing for optional providers (mtdev, clipboard
# tools) does not print tracebacks at every start.
os.environ.setdefault("KIVY_LOG_MODE", "PYTHON")
