#!/usr/bin/env bash
# The main job, from a fresh clone: set up, build an index over a slice of the
# shared corpus, query and predict for the 7 competition images.
#
#   bash scripts/quickstart.sh
#
# CLIP weights: first a real, small open_clip model (ViT-B-32 / laion2b_s34b_b79k,
# about 600 MB, downloaded once into open_clip's cache). Where it cannot be
# downloaded, a TINY RANDOM-WEIGHTS model made on the spot (runs offline; every
# result then carries a note that it is meaningless). Choose yourself with:
#   NP_CLIP=tiny bash scripts/quickstart.sh                        # skip the download attempt
#   NP_CLIP=ViT-H-14 bash scripts/quickstart.sh                    # the build default (laion2b_s32b_b79k, ~3.9 GB)
#   NP_CLIP=local-dir:/path/to/folder bash scripts/quickstart.sh   # offline, your weights
# Other knobs: NP_PRETRAINED (tag or checkpoint for NP_CLIP), NP_LIMIT (prompts, default 3000),
# NEAREST_PROMPT_DATA (default ../shared/data), NP_RUNS (default runs/), NP_DOWNLOAD_TIMEOUT (s, default 900).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
NP=.venv/bin/nearest-prompt
DATA=${NEAREST_PROMPT_DATA:-../shared/data}
RUNS=${NP_RUNS:-runs}
LIMIT=${NP_LIMIT:-3000}
mkdir -p "$RUNS"

tiny() {
    export HF_HUB_OFFLINE=1
    "$PY" scripts/make_tiny_clip.py "$RUNS/tiny_clip" >/dev/null
    CLIP=(--clip "local-dir:$RUNS/tiny_clip")
    echo "== CLIP: tiny RANDOM-WEIGHTS model (local-dir:$RUNS/tiny_clip): the pipeline runs offline, but neighbours"
    echo "   are meaningless. For real results: NP_CLIP=ViT-H-14 (downloads laion2b_s32b_b79k) or NP_CLIP=local-dir:PATH"
}

case "${NP_CLIP:-}" in
    "")
        echo "== CLIP: looking for ViT-B-32 / laion2b_s34b_b79k (real weights, about 600 MB, downloaded once by open_clip)"
        if why=$("$PY" -c 'import open_clip
from nearest_prompt.encoders import hub
cfg = open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")
print("" if hub.cached(cfg) else hub.unreachable(cfg) or "", end="")') && [ -z "$why" ]; then
            echo "   downloading it if it is not cached yet: a few minutes on a slow line (NP_CLIP=tiny skips this)"
            if timeout "${NP_DOWNLOAD_TIMEOUT:-900}" "$PY" -c 'from nearest_prompt.encoders.clip import load_clip, parse_clip_spec
load_clip(parse_clip_spec("ViT-B-32", "laion2b_s34b_b79k"), device="cpu")' >/dev/null 2>&1; then
                CLIP=(--clip ViT-B-32 --pretrained laion2b_s34b_b79k)
                echo "== CLIP: ViT-B-32 / laion2b_s34b_b79k"
            else
                echo "== CLIP: ViT-B-32 could not be downloaded"
                tiny
            fi
        else
            echo "== CLIP: no download possible here (${why:-no answer}): using a tiny model instead"
            tiny
        fi ;;
    tiny) tiny ;;
    *)
        CLIP=(--clip "$NP_CLIP")
        if [ -n "${NP_PRETRAINED:-}" ]; then CLIP+=(--pretrained "$NP_PRETRAINED"); fi
        echo "== CLIP: $NP_CLIP ${NP_PRETRAINED:-}" ;;
esac

echo "== build: first $LIMIT prompts of $DATA/prompts/sd_prompts.parquet"
"$NP" build --prompts "$DATA/prompts/sd_prompts.parquet" --limit "$LIMIT" "${CLIP[@]}" --out "$RUNS/index"
"$NP" info --index "$RUNS/index"

echo "== query: the 7 competition images, top 3 each"
"$NP" query --index "$RUNS/index" "$DATA/eval/kaggle_sample/images" --k 3

PROMPT=$("$PY" -c "import sys; from nearest_prompt import index_store; print(index_store.open_store(sys.argv[1]).prompts([0])[0])" "$RUNS/index")
echo "== query --text: a prompt of the index must come back first"
"$NP" query --index "$RUNS/index" --text "$PROMPT" --k 3

echo "== predict: competition submission for the 7 images"
"$NP" predict --index "$RUNS/index" "$DATA/eval/kaggle_sample/images" --out "$RUNS/submission.csv"
head -3 "$RUNS/submission.csv"

echo "== interrogate: a prompt to paste for each of the 7 images"
"$NP" interrogate --index "$RUNS/index" "$DATA/eval/kaggle_sample/images"
