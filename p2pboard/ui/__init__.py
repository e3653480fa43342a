"""The Kivy whiteboard window. Kivy is imported only under this package.

``KIVY_NO_ARGS`` is set before Kivy loads so that Kivy leaves p2pboard's flags alone.
"""

import os

os.environ.setdefault("KIVY_NO_ARGS", "1")
os.environ.setdefault("KIVY_NO_CONSOLELOG", "1")
