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


def make_tiny_clip(folder: str | Path, *, seed: int = 0, width: int = 64) -> Path:
    """Write ``open_clip_config.json`` + ``open_clip_model.safetensors`` into ``folder``: towers of ``width`` (and an
    embedding of that size; 64 by default), so that tests can hold two models of different widths."""
    import copy

    import open_clip

    cfg = copy.deepcopy(TINY_MODEL_CFG)
    cfg["embed_dim"] = cfg["vision_cfg"]["width"] = cfg["text_cfg"]["width"] = width
    return _save_random(open_clip.CLIP, cfg, folder, seed=seed)


def _save_random(model_class: type, model_cfg: dict, folder: str | Path, *, seed: int) -> Path:
    """``model_class`` built from ``model_cfg`` with seeded random weights, saved as a ``local-dir:`` folder
    marked random (``encoders.clip.save_local_dir``)."""
    import copy

    import torch

    from nearest_prompt.encoders.clip import save_local_dir

    torch.manual_seed(seed)
    cfg = copy.deepcopy(model_cfg)
    cfg.pop("custom_text", None)  # a config key of open_clip's factory, not a constructor argument
    return save_local_dir(model_class(**cfg), folder, model_cfg=model_cfg, preprocess_cfg=TINY_PREPROCESS_CFG,
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
    import open_clip

    return _save_random(open_clip.CoCa, TINY_COCA_CFG, folder, seed=seed)
