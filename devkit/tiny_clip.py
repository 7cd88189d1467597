"""A tiny open_clip model with random weights, saved as a ``local-dir:`` folder.

For tests and the offline quick start only: it has the real CLIP
architecture (ViT image tower, transformer text tower, 77-token context,
the real BPE tokenizer) at toy size, so every loading and encoding code path
runs, but its neighbours mean nothing. Never read quality into its numbers.
"""

from __future__ import annotations

from pathlib import Path

TINY_MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_PREPROCESS_CFG = {"size": 64}


def make_tiny_clip(folder: str | Path, *, seed: int = 0) -> Path:
    """Write ``open_clip_config.json`` + ``open_clip_model.safetensors`` into ``folder``."""
    import copy

    import open_clip
    import torch

    from encoders.clip import save_local_dir

    torch.manual_seed(seed)
    cfg = copy.deepcopy(TINY_MODEL_CFG)
    model = open_clip.CLIP(**cfg)
    return save_local_dir(model, folder, model_cfg=TINY_MODEL_CFG, preprocess_cfg=TINY_PREPROCESS_CFG,
                          random_weights=True)
