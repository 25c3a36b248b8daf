"""The base of every error a user's input can cause (a bad value, a missing file or
package, a corrupt episode or checkpoint, a diverging run). Entry points catch
:class:`WorldModelsError` and print its message on one line instead of a traceback;
each family's own user errors derive from it too."""

from __future__ import annotations


INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C, as shells report SIGINT


class WorldModelsError(Exception):
    """A problem with what the user gave; the message says what and how to fix it."""


__all__ = ["INTERRUPTED", "WorldModelsError"]
