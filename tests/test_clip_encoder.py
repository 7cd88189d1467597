"""The CLIP encoder: trimmed text forward == open_clip's full forward; loading paths."""

import numpy as np
import pytest
import torch

from nearest_prompt.common.errors import InputError
from nearest_prompt.encoders.clip import can_trim, encode_tokens_trimmed, parse_clip_spec

from .conftest import corpus_slice


def test_trimmed_text_forward_equals_full_forward(clip_encoder):
    model = clip_encoder.model
    assert can_trim(model)
    texts = corpus_slice(40) + ["a", "", "word " * 200]  # short, empty, and truncated-at-context prompts
    tokens = clip_encoder.tokenizer(texts)
    with torch.inference_mode():
        full = model.encode_text(tokens).numpy()
        for batch in (slice(0, 5), slice(0, 43), slice(40, 42)):
            trimmed = encode_tokens_trimmed(model, tokens[batch]).numpy()
            np.testing.assert_allclose(trimmed, full[batch], atol=1e-5, rtol=1e-4)
    out = clip_encoder.encode_text(texts, batch_size=7)
    ref = full / np.linalg.norm(full, axis=1, keepdims=True)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_local_dir_spec_checks(tmp_path, tiny_clip_dir):
    with pytest.raises(InputError, match="no open_clip_config.json"):
        parse_clip_spec(f"local-dir:{tmp_path}")
    (tmp_path / "open_clip_config.json").write_text((tiny_clip_dir / "open_clip_config.json").read_text())
    with pytest.raises(InputError, match="no weights file"):
        parse_clip_spec(f"local-dir:{tmp_path}")
    with pytest.raises(InputError, match="cannot be combined"):
        parse_clip_spec(f"local-dir:{tiny_clip_dir}", "laion2b_s32b_b79k")
    with pytest.raises(InputError, match="neither a file nor a tag"):
        parse_clip_spec("ViT-B-32", "not-a-tag")
    assert parse_clip_spec().pretrained == "laion2b_s32b_b79k"  # the documented default


def test_checkpoint_file_path(tmp_path, tiny_clip_dir):
    """A user's checkpoint file, passed as --clip ARCH --pretrained FILE, loads through open_clip."""
    import json

    import open_clip

    from devkit.tiny_clip import TINY_MODEL_CFG
    from nearest_prompt.encoders.clip import load_clip

    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "Tiny-Test.json").write_text(json.dumps(TINY_MODEL_CFG))
    open_clip.add_model_config(str(cfg_dir))
    enc = load_clip(parse_clip_spec("Tiny-Test", str(tiny_clip_dir / "open_clip_model.safetensors")), device="cpu")
    ref = load_clip(parse_clip_spec(f"local-dir:{tiny_clip_dir}"), device="cpu")
    np.testing.assert_allclose(enc.encode_text(["a red fox"]), ref.encode_text(["a red fox"]), atol=1e-6)
    assert enc.info.weights == ref.info.weights and ref.info.mismatch(enc.info) is None
