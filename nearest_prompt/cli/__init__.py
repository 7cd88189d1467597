"""The ``nearest-prompt`` command (the top floor): parse arguments, call one library function, print.

``main`` (build, query, predict, info, serve), ``evaluation`` (eval, blend), ``compose`` (interrogate),
``args`` (shared options, defaults read from the library's config dataclasses, parameter-to-flag map).
"""

from .main import main

__all__ = ["main"]
