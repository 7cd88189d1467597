"""Exceptions a user can act on. The CLI prints them as one line, no traceback."""

from __future__ import annotations


class NearestPromptError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class InputError(NearestPromptError, ValueError):
    """Bad user input: corpus files, images, options."""


class StoreError(NearestPromptError, ValueError):
    """A missing, corrupt, truncated or incompatible index store."""


class ModelError(NearestPromptError, RuntimeError):
    """A model that cannot be found, loaded or downloaded, or does not match the store."""
