"""Tiny open_clip models (CLIP, and CoCa for the captioner) with random weights, saved as ``local-dir:`` folders.

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


TINY_COCA_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16,
                   "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
    "text_cfg": {"context_length": 76, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 76, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                       "attn_pooler_heads": 2},
    "custom_text": True,
}


def make_tiny_coca(folder: str | Path, *, seed: int = 0) -> Path:
    """A tiny open_clip CoCa (the captioner's architecture: image tower, text tower, multimodal decoder)
    with random weights, as a ``local-dir:`` folder. Its captions are noise; it exercises the code path."""
    import copy

    import open_clip
    import torch

    from encoders.clip import save_local_dir

    torch.manual_seed(seed)
    cfg = copy.deepcopy(TINY_COCA_CFG)
    cfg.pop("custom_text")
    model = open_clip.CoCa(**cfg)
    return save_local_dir(model, folder, model_cfg=TINY_COCA_CFG, preprocess_cfg=TINY_PREPROCESS_CFG,
                          random_weights=True)
