"""Exceptions a user can act on. The adapters (CLI, service) print them as one line, no traceback.

An error about one option carries its parameter name (``param``: ``"k"``, ``"limit"``, ``"out"``), and
its message speaks of that parameter, never of a command-line flag: the CLI maps the parameter to its
flag (``--k``), a service to its JSON field.
"""

from __future__ import annotations


class NearestPromptError(Exception):
    """Base class: the message says what is wrong and how to fix it."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.param = param


class InputError(NearestPromptError, ValueError):
    """Bad user input: corpus files, images, options."""


class StoreError(NearestPromptError, ValueError):
    """A missing, corrupt, truncated or incompatible index store."""


class ModelError(NearestPromptError, RuntimeError):
    """A model that cannot be found, loaded or downloaded, or does not match the store."""


class BusyError(NearestPromptError, RuntimeError):
    """Another process holds a resource this one needs (a build's work folder)."""
