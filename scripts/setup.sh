#!/usr/bin/env bash
# Create .venv (once) and install nearest-prompt with the extras in $NP_EXTRAS (default: test) into it.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
EXTRAS=${NP_EXTRAS:-test}
stamp=".venv/.nearest-prompt-installed-${EXTRAS//,/-}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/constraints.txt -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet -c scripts/constraints.txt -e ".[$EXTRAS]"
    # clip-retrieval's own ClipClient checks the service's clip back protocol; its package pins an old
    # numpy and a server stack, so it comes without its dependencies (the client needs only requests)
    .venv/bin/python -m pip install --quiet --no-deps clip-retrieval==2.45.0
    touch "$stamp"
fi
