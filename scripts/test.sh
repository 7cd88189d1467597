#!/usr/bin/env bash
# Set up (if needed) and run the test suite: bash scripts/test.sh [pytest args], e.g. -m "not slow" (the fast part)
set -euo pipefail
cd "$(dirname "$0")/.."
NP_EXTRAS=test,ray bash scripts/setup.sh
# clip-retrieval's own ClipClient checks the service's clip back protocol. Its package pins an old numpy and a
# server stack, so it goes without its dependencies into a folder of its own (the tests load its client module
# from there; pip never counts it as installed, so it has nothing to say about its requirements).
if [ ! -f .venv/clip-retrieval/clip_retrieval/clip_client.py ]; then
    .venv/bin/python -m pip install --quiet --no-deps --target .venv/clip-retrieval clip-retrieval==2.45.0
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
