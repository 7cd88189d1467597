#!/usr/bin/env bash
# The main job, from a fresh clone: set up, build an index over a slice of the
# shared corpus, query and predict for the 7 competition images.
#
#   bash scripts/quickstart.sh
#
# CLIP weights: by default a TINY RANDOM-WEIGHTS open_clip model made on the
# spot (runs offline, results are meaningless). For real results:
#   NP_CLIP=ViT-H-14 bash scripts/quickstart.sh              # downloads laion2b_s32b_b79k (~3.9 GB)
#   NP_CLIP=local-dir:/path/to/folder bash scripts/quickstart.sh   # offline, your weights
# Other knobs: NP_LIMIT (prompts, default 3000), NEAREST_PROMPT_DATA (default ../shared/data), NP_RUNS (default runs/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
NP=.venv/bin/nearest-prompt
DATA=${NEAREST_PROMPT_DATA:-../shared/data}
RUNS=${NP_RUNS:-runs}
LIMIT=${NP_LIMIT:-3000}
mkdir -p "$RUNS"

if [ -z "${NP_CLIP:-}" ]; then
    export HF_HUB_OFFLINE=1
    "$PY" scripts/make_tiny_clip.py "$RUNS/tiny_clip" >/dev/null
    NP_CLIP="local-dir:$RUNS/tiny_clip"
    echo "== CLIP: tiny RANDOM-WEIGHTS model ($NP_CLIP): the pipeline runs offline, but neighbours are meaningless."
    echo "   For real results: NP_CLIP=ViT-H-14 (downloads laion2b_s32b_b79k) or NP_CLIP=local-dir:/path/to/folder"
else
    echo "== CLIP: $NP_CLIP"
fi

echo "== build: first $LIMIT prompts of $DATA/prompts/sd_prompts.parquet"
"$NP" build --prompts "$DATA/prompts/sd_prompts.parquet" --limit "$LIMIT" --clip "$NP_CLIP" --out "$RUNS/index"
"$NP" info --index "$RUNS/index"

echo "== query: the 7 competition images, top 3 each"
"$NP" query --index "$RUNS/index" "$DATA/eval/kaggle_sample/images" --k 3

PROMPT=$("$PY" -c "import index_store, sys; print(index_store.open_store(sys.argv[1]).prompts([0])[0])" "$RUNS/index")
echo "== query --text: a prompt of the index must come back first"
"$NP" query --index "$RUNS/index" --text "$PROMPT" --k 3

echo "== predict: competition submission for the 7 images"
"$NP" predict --index "$RUNS/index" "$DATA/eval/kaggle_sample/images" --out "$RUNS/submission.csv"
head -3 "$RUNS/submission.csv"
