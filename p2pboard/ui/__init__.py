"""The Kivy whiteboard window. Kivy is imported only inside this package."""
