"""The plugin's errors: one root, so that a caller can catch all of ours and nothing else.

Every message is meant for the person running pytest: it says what happened and what
to do about it. Errors about what the user gave (a marker, an option, a rule, a
saved file) are also ``ValueError``s.
"""

from __future__ import annotations


class OllamaCpuError(Exception):
    """Base of the plugin's errors; the message is meant for the person running pytest."""


class InputError(OllamaCpuError, ValueError):
    """Something the user gave cannot be used; the message names it and how to fix it."""
