"""A captioner: an open_clip CoCa model that writes a caption for an image.

Named like a CLIP model (``encoders.clip``): an architecture plus a pretrained tag
(``coca_ViT-L-14`` / ``mscoco_finetuned_laion2b_s13b_b90k``, the default), an architecture plus a
checkpoint file, or a ``local-dir:`` folder. Loading is open_clip's own; decoding is greedy over CoCa's
own forward pass (open_clip's ``generate`` needs ``transformers.BeamSearchScorer``, which the installed
transformers 5 no longer has): start token, then at each step the most probable next token, no
repeated token twice in a row, at least ``MIN_TOKENS`` and at most ``max_tokens`` tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nearest_prompt.common.device import resolve_device
from nearest_prompt.common.errors import InputError, ModelError
from nearest_prompt.common.progress import progress_bar

from .clip import ClipSpec, locate_weights, parse_clip_spec
from .images import DEFAULT_MAX_PIXELS, load_image

log = logging.getLogger(__name__)

DEFAULT_CAPTIONER = "coca_ViT-L-14"
DEFAULT_CAPTIONER_PRETRAINED = "mscoco_finetuned_laion2b_s13b_b90k"
SOT, EOT = 49406, 49407  # open_clip's tokenizer
MIN_TOKENS = 5
MAX_TOKENS = 30


def parse_captioner_spec(model: str | None = None, pretrained: str | None = None) -> ClipSpec:
    """Validate a captioner choice before anything is loaded (the default tag for the default model)."""
    return parse_clip_spec(model or DEFAULT_CAPTIONER, pretrained, default_model=DEFAULT_CAPTIONER,
                           default_pretrained=DEFAULT_CAPTIONER_PRETRAINED, param="captioner")


@dataclass
class Captioner:
    model: Any
    preprocess: Any
    label: str
    device: str

    def caption(self, images: Sequence[Any], *, batch_size: int = 8, max_tokens: int = MAX_TOKENS) -> list[str]:
        """One caption per RGB PIL image (see ``encoders.images.load_image``)."""
        import torch

        out: list[str] = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                pixels = torch.stack([self.preprocess(im) for im in images[start:start + batch_size]])
                out.extend(self._decode(pixels.to(self.device), max_tokens=max_tokens))
        return out

    def _decode(self, pixels: Any, *, max_tokens: int) -> list[str]:
        import open_clip
        import torch

        latent, embs = self.model._encode_image(pixels)
        text = torch.full((len(pixels), 1), SOT, dtype=torch.long, device=pixels.device)
        done = torch.zeros(len(pixels), dtype=torch.bool, device=pixels.device)
        for step in range(max_tokens):
            logits = self.model(pixels, text, image_latent=latent, image_embs=embs, output_labels=False)["logits"][:, -1]
            logits[:, SOT] = -torch.inf
            logits.scatter_(1, text[:, -1:], -torch.inf)  # never the same token twice in a row
            if step < MIN_TOKENS:
                logits[:, EOT] = -torch.inf
            nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, EOT), nxt)
            text = torch.cat([text, nxt[:, None]], dim=1)
            done |= nxt == EOT
            if done.all():
                break
        captions = []
        for row in text.tolist():
            words = open_clip.decode(torch.tensor(row)).split("<end_of_text>")[0].replace("<start_of_text>", "")
            captions.append(words.strip().rstrip(" .").strip())
        return captions


def load_captioner(spec: ClipSpec, *, device: str | None = None) -> Captioner:
    """Load a CoCa captioner (weights located first, so a failed download says how to pass local ones)."""
    import open_clip

    device = resolve_device(device)
    locate_weights(spec, param="captioner")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(spec.model, pretrained=spec.pretrained,
                                                                     device=device)
    except Exception as e:
        raise ModelError(f"could not load the captioner {spec.label}: {e}", param="captioner") from e
    if not hasattr(model, "text_decoder"):
        raise InputError(f"{spec.label} is not a captioning model: give a CoCa model (e.g. {DEFAULT_CAPTIONER})",
                         param="captioner")
    model.eval()
    log.debug("loaded captioner %s on %s", spec.label, device)
    return Captioner(model=model, preprocess=preprocess, label=spec.label, device=device)


def caption_files(captioner: Captioner, paths: Sequence[Any], *, batch_size: int = 8, max_pixels: int | None = None,
                  progress: bool = False) -> list[str]:
    """Captions of image files, read (``encoders.images.load_image``) and captioned a batch at a time."""
    out: list[str] = []
    with progress_bar(total=len(paths), desc="captions", enabled=progress, unit="img") as bar:
        for start in range(0, len(paths), batch_size):
            batch = paths[start:start + batch_size]
            out += captioner.caption([load_image(p, max_pixels=max_pixels or DEFAULT_MAX_PIXELS) for p in batch],
                                     batch_size=batch_size)
            bar.update(len(batch))
    return out
