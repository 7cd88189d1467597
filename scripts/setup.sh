#!/usr/bin/env bash
# Create .venv (once) and install nearest-prompt into it, with the extras in $NP_EXTRAS (default: none, the
# lean core; e.g. NP_EXTRAS=serve,eval). Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
EXTRAS=${NP_EXTRAS:-}
stamp=".venv/.nearest-prompt-installed-${EXTRAS//,/-}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/constraints.txt -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet -c scripts/constraints.txt -e ".${EXTRAS:+[$EXTRAS]}"
    touch "$stamp"
fi
