"""Compose a prompt a person can paste: ``Composer(retriever).compose(...)`` / ``.interrogate(...)``."""

from .compose import DEFAULT_OBJECTIVE, MODES, OBJECTIVES, Component, ComposeOptions, Composer, Composition
from .families import FAMILIES, family

__all__ = ["Composer", "ComposeOptions", "Composition", "Component", "MODES", "OBJECTIVES", "DEFAULT_OBJECTIVE",
           "FAMILIES", "family"]
