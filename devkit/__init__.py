"""Development and test support, not used by the library: where the shared data lives (``paths``) and
a tiny random-weights open_clip model for offline tests and the quick start (``tiny_clip``), and a
real ``nearest-prompt serve`` process on a free loopback port (``serve``, for tests and benchmarks), and
encoders that kill their own process once (``faults``, for the Ray worker-death test).
No runtime package imports this one (an import-linter contract in pyproject.toml)."""
