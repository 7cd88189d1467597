"""Development and test support, not used by the library: where the shared data lives (``paths``) and
a tiny random-weights open_clip model for offline tests and the quick start (``tiny_clip``).
No runtime package imports this one (an import-linter contract in pyproject.toml)."""
