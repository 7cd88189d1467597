"""The CLIP encoder (open_clip): model choice, offline-friendly loading, identity.

A CLIP model is named in one of three ways:

* an open_clip architecture plus a pretrained tag: ``ViT-H-14`` +
  ``laion2b_s32b_b79k`` (downloaded by open_clip into its cache);
* an architecture plus a local checkpoint file: ``ViT-H-14`` +
  ``/path/open_clip_pytorch_model.bin``;
* a folder: ``local-dir:/path`` holding ``open_clip_config.json`` and
  ``open_clip_model.safetensors`` (or another weights file), or a hub repo
  ``hf-hub:org/name``.

``ClipInfo`` is what the index store records, so that a query can be
refused when it would use another model than the one the index was built with.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from nearest_prompt.common.atomic import atomic_path, write_bytes_atomic
from nearest_prompt.common.checksums import weights_fingerprint
from nearest_prompt.common.device import resolve_device
from nearest_prompt.common.errors import InputError, ModelError

from . import hub

log = logging.getLogger(__name__)

DEFAULT_CLIP = "ViT-H-14"
DEFAULT_PRETRAINED = "laion2b_s32b_b79k"
LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
_OFFLINE_HINT = (
    "download the weights on a machine with access and pass the checkpoint file as {tag} with the "
    "architecture as {param} (--{flag} ARCH --{tag_flag} FILE), or save an open_clip folder "
    "(open_clip_config.json + open_clip_model.safetensors) and pass it as {param}=local-dir:PATH"
)


def offline_hint(param: str = "clip") -> str:
    """How to pass local weights for the model parameter ``param`` ("clip", "captioner", "spaces")."""
    if param == "spaces":
        return ("download the weights on a machine with access and give the space as NAME=ARCH@FILE (the checkpoint "
                "file), or save an open_clip folder (open_clip_config.json + open_clip_model.safetensors) and give "
                "it as NAME=local-dir:PATH")
    tag = "pretrained" if param == "clip" else f"{param}_pretrained"
    return _OFFLINE_HINT.format(param=param, tag=tag, flag=param.replace("_", "-"), tag_flag=tag.replace("_", "-"))


@dataclass(frozen=True)
class ClipSpec:
    """How to load a CLIP model. ``pretrained`` is a tag or a checkpoint path (architectures only)."""

    model: str
    pretrained: str | None = None

    @property
    def label(self) -> str:
        return f"{self.model} / {self.pretrained}" if self.pretrained else self.model


@dataclass(frozen=True)
class ClipInfo:
    """The identity of a loaded CLIP model, as recorded in a store manifest."""

    model: str
    pretrained: str | None
    embed_dim: int
    context_length: int
    model_cfg: dict[str, Any]
    preprocess: dict[str, Any]
    weights: str | None  # fingerprint of the weights file, None if unknown
    random_weights: bool = False  # a test model (its local-dir: config says so): results are meaningless

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClipInfo:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__ if k != "random_weights"},
                   random_weights=bool(d.get("random_weights", False)))

    def spec(self) -> ClipSpec:
        return ClipSpec(self.model, self.pretrained)

    def mismatch(self, other: ClipInfo) -> str | None:
        """Why ``other`` is not the same model as ``self``; None when it is."""
        if self.embed_dim != other.embed_dim:
            return f"embedding size {other.embed_dim} != {self.embed_dim}"
        if _canonical(self.model_cfg) != _canonical(other.model_cfg):
            return "different architecture config"
        if self.weights and other.weights and self.weights != other.weights:
            return "different weights (fingerprints differ)"
        if not (self.weights and other.weights) and (self.model, self.pretrained) != (other.model, other.pretrained):
            return "different model name or pretrained tag"
        return None


def _canonical(cfg: dict[str, Any]) -> str:
    return json.dumps(cfg, sort_keys=True, default=str)


def parse_clip_spec(model: str | None = None, pretrained: str | None = None, *, default_model: str = DEFAULT_CLIP,
                    default_pretrained: str = DEFAULT_PRETRAINED, param: str = "clip") -> ClipSpec:
    """Validate a model choice before anything is loaded; fills in the default tag of the default model.
    ``param`` names the parameter in errors (its tag parameter is ``{param}_pretrained``, ``pretrained``
    for clip)."""
    import open_clip

    tag_param = "pretrained" if param == "clip" else f"{param}_pretrained"
    label, tag_label = param, tag_param
    if param == "spaces":  # a space is NAME=MODEL@PRETRAINED: name its parts as a user types them
        tag_param = param
        label, tag_label = "the space's MODEL", "its @PRETRAINED"
    model = model or default_model
    if model.startswith(LOCAL_DIR):
        if pretrained:
            raise InputError(f"{tag_label} cannot be combined with {label}={model}: the folder holds the weights",
                             param=tag_param)
        folder = Path(model[len(LOCAL_DIR):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise InputError(
                f"{model}: no open_clip_config.json in {folder}; a local-dir: folder needs "
                "open_clip_config.json and open_clip_model.safetensors", param=param)
        if _weights_in_dir(folder) is None:
            raise InputError(f"{model}: no weights file in {folder} (expected open_clip_model.safetensors)",
                             param=param)
        return ClipSpec(LOCAL_DIR + str(folder.resolve()))
    if model.startswith(HF_HUB):
        if pretrained:
            raise InputError(f"{tag_label} cannot be combined with {label}={model}", param=tag_param)
        return ClipSpec(model)
    if Path(model).is_file():
        raise InputError(
            f"{model} is a file: name the architecture as {label} (e.g. {default_model}) and pass the checkpoint "
            f"file as {tag_label}", param=param)
    known = open_clip.list_models()
    if model not in known:
        close = difflib.get_close_matches(model, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InputError(f"unknown CLIP model {model!r}{hint}; see open_clip.list_models(), or use local-dir:PATH",
                         param=param)
    if pretrained is None:
        if model != default_model:
            tags = open_clip.list_pretrained_tags_by_model(model)
            raise InputError(
                f"{label}={model} needs {tag_label}: a tag or a checkpoint file "
                f"(tags for {model}: {', '.join(tags) or 'none'}); without weights the model is random",
                param=tag_param)
        pretrained = default_pretrained
    if os.path.isfile(pretrained):
        return ClipSpec(model, str(Path(pretrained).resolve()))
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained not in tags:
        raise InputError(
            f"{pretrained!r} is neither a file nor a tag of {model} (tags: {', '.join(tags) or 'none'})",
            param=tag_param)
    return ClipSpec(model, pretrained)


def _weights_in_dir(folder: Path) -> Path | None:
    """The checkpoint open_clip itself would load from a ``local-dir:`` folder."""
    from open_clip.factory import _find_checkpoint_in_dir

    found = _find_checkpoint_in_dir(folder) if folder.is_dir() else None
    return Path(found) if found else None


def portable_spec(info: ClipInfo, *, store: Path) -> ClipInfo:
    """``info`` as a store records it: a ``local-dir:`` folder inside or beside the store (under the
    store's parent) is written relative to the store, so that the store and its model folder can be
    moved or copied together; ``resolve_spec`` reads it back."""
    if not info.model.startswith(LOCAL_DIR):
        return info
    folder = Path(info.model[len(LOCAL_DIR):])
    store = Path(store).absolute()
    if not folder.is_relative_to(store.parent):
        return info
    return replace(info, model=LOCAL_DIR + os.path.relpath(folder, store))


def resolve_spec(spec: ClipSpec, *, store: Path) -> ClipSpec:
    """A spec read from a store's manifest, with a relative ``local-dir:`` path resolved against the store."""
    if spec.model.startswith(LOCAL_DIR) and not os.path.isabs(spec.model[len(LOCAL_DIR):]):
        return ClipSpec(LOCAL_DIR + os.path.normpath(Path(store) / spec.model[len(LOCAL_DIR):]), spec.pretrained)
    return spec


def locate_weights(spec: ClipSpec, *, param: str = "clip") -> Path:
    """The weights file of a spec, downloading a tag into open_clip's cache if needed; a failed download is
    a ``ModelError`` saying how to pass local weights as ``param``."""
    import open_clip
    from open_clip import pretrained as oc_pretrained

    if spec.model.startswith(LOCAL_DIR):
        path = _weights_in_dir(Path(spec.model[len(LOCAL_DIR):]))
        if path is None:
            raise ModelError(f"no weights file in {spec.model}", param=param)
        return path
    if os.path.isfile(spec.pretrained or ""):
        return Path(spec.pretrained)
    what = "CLIP" if param in ("clip", "spaces") else param
    cfg = {"hf_hub": spec.model[len(HF_HUB):] + "/"} if spec.model.startswith(HF_HUB) else \
        open_clip.get_pretrained_cfg(spec.model, spec.pretrained)
    found = hub.cached(cfg)
    if found:
        return Path(found)
    why = hub.unreachable(cfg)  # a second or three, instead of a minute of retries
    if why:
        raise ModelError(f"could not download {what} weights {spec.label}: {why}; {offline_hint(param)}", param=param)
    try:
        with hub.quiet():
            if spec.model.startswith(HF_HUB):
                return Path(oc_pretrained.download_pretrained_from_hf(spec.model[len(HF_HUB):]))
            return Path(oc_pretrained.download_pretrained(cfg))
    except Exception as e:  # hub, network and cache errors come in many types
        raise ModelError(f"could not download {what} weights {spec.label} ({type(e).__name__}); {offline_hint(param)}",
                         param=param) from e


class ClipEncoder:
    """Encodes texts and images into unit CLIP vectors (float32)."""

    def __init__(self, model: Any, tokenizer: Any, preprocess: Any, info: ClipInfo, device: str):
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.info = info
        self.device = device

    @property
    def dim(self) -> int:
        return self.info.embed_dim

    def _autocast(self):
        import torch

        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast("cpu", enabled=False)

    def encode_text(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Unit vectors [n, d]; texts longer than the context are truncated by the tokenizer.

        For standard open_clip ``CLIP`` models (causal text mask, EOT-token
        pooling) each batch runs only up to its longest prompt instead of the
        full context: the same result with less compute (see
        ``encode_tokens_trimmed``). On CUDA the next batch is tokenised on a
        CPU thread while the GPU works, into pinned memory.
        """
        import torch

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        batches = [list(texts[s:s + batch_size]) for s in range(0, len(texts), batch_size)]
        cuda = self.device.startswith("cuda")

        def tokenize(batch: list[str]):
            tokens = self.tokenizer(batch)
            return tokens.pin_memory() if cuda else tokens

        with torch.inference_mode(), self._autocast(), ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(tokenize, batches[0]) if (cuda and batches) else None
            start = 0
            for i, batch in enumerate(batches):
                if cuda:
                    tokens = pending.result()
                    if i + 1 < len(batches):
                        pending = pool.submit(tokenize, batches[i + 1])
                else:
                    tokens = tokenize(batch)
                emb = self._encode_tokens(tokens.to(self.device, non_blocking=True)).float()
                out[start:start + len(emb)] = torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()
                start += len(emb)
        return out

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        """Tokens of each text without truncation, start and end tokens included (int64 [n]): a text fits
        the model's context when its count is at most ``info.context_length``."""
        return count_tokens(self.tokenizer, texts)

    def _encode_tokens(self, tokens: Any) -> Any:
        if can_trim(self.model):
            return encode_tokens_trimmed(self.model, tokens)
        return self.model.encode_text(tokens)

    def encode_images(self, images: Sequence[Any], *, batch_size: int = 16) -> np.ndarray:
        """Unit vectors [n, d] for RGB PIL images (see ``encoders.images.load_image``)."""
        import torch

        out = np.empty((len(images), self.dim), dtype=np.float32)
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(images), batch_size):
                pixels = torch.stack([self.preprocess(im) for im in images[start:start + batch_size]])
                emb = self.model.encode_image(pixels.to(self.device, non_blocking=True)).float()
                out[start:start + len(emb)] = torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()
        return out


def count_tokens(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Untruncated token counts (start and end included) with open_clip's tokenizer; tokenizers without
    ``encode`` (hub tokenizers) count what they keep of the context."""
    if hasattr(tokenizer, "encode"):
        return np.array([len(tokenizer.encode(t)) + 2 for t in texts], dtype=np.int64)
    return (np.asarray(tokenizer(list(texts))) != 0).sum(-1).astype(np.int64)


def load_tokenizer(spec: ClipSpec) -> Any:
    """The text tokenizer of a CLIP model, without loading its weights."""
    import open_clip

    try:
        return open_clip.get_tokenizer(spec.model)
    except Exception as e:
        raise ModelError(f"could not load the tokenizer of CLIP {spec.label}: {e}") from e


def can_trim(model: Any) -> bool:
    """True for open_clip ``CLIP`` text towers where trimming padding cannot change the output."""
    import open_clip

    return (type(model) is open_clip.CLIP and getattr(model, "text_pool_type", None) == "argmax"
            and getattr(model, "attn_mask", None) is not None and getattr(model, "cls_emb", None) is None)


def encode_tokens_trimmed(model: Any, tokens: Any) -> Any:
    """``model.encode_text(tokens)`` computed over the first L positions only, L = the last EOT + 1.

    Exact for causal attention with EOT (argmax) pooling: positions after a
    sequence's EOT token never influence the EOT position's output.
    """
    import torch
    from open_clip.transformer import text_global_pool

    length = int(tokens.argmax(dim=-1).max()) + 1
    t = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(t).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, t, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    proj = model.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return x


def load_clip(spec: ClipSpec, *, device: str | None = None) -> ClipEncoder:
    """Load a CLIP model (weights checked first, so a failed download says how to go offline)."""
    import open_clip

    device = resolve_device(device)
    weights = locate_weights(spec)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model, pretrained=spec.pretrained, device=device
        )
        tokenizer = open_clip.get_tokenizer(spec.model)
    except Exception as e:
        raise ModelError(f"could not load CLIP {spec.label}: {e}") from e
    model.eval()
    info = ClipInfo(
        model=spec.model,
        pretrained=spec.pretrained,
        embed_dim=int(_embed_dim(model)),
        context_length=int(getattr(model, "context_length", 0) or getattr(tokenizer, "context_length", 0)),
        model_cfg=_model_cfg(spec),
        preprocess=dict(getattr(model.visual, "preprocess_cfg", {}) or {}),
        weights=weights_fingerprint(weights),
        random_weights=_marked_random(spec),
    )
    log.debug("loaded CLIP %s (dim %d) on %s", spec.label, info.embed_dim, device)
    return ClipEncoder(model, tokenizer, preprocess, info, device)


def _embed_dim(model: Any) -> int:
    import torch

    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return proj.shape[1]
    with torch.inference_mode():
        return model.encode_text(torch.zeros((1, model.context_length), dtype=torch.long,
                                             device=next(model.parameters()).device)).shape[-1]


def _model_cfg(spec: ClipSpec) -> dict[str, Any]:
    """The architecture config, as open_clip reads it (``local-dir:`` config file, hub or built-in)."""
    import open_clip

    return open_clip.get_model_config(spec.model) or {}


def _marked_random(spec: ClipSpec) -> bool:
    """True when a ``local-dir:`` folder's config marks its weights as random (``save_local_dir``)."""
    if not spec.model.startswith(LOCAL_DIR):
        return False
    try:
        config = json.loads((Path(spec.model[len(LOCAL_DIR):]) / "open_clip_config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(isinstance(config, dict) and config.get("random_weights"))


def save_local_dir(model: Any, folder: str | os.PathLike, *, model_cfg: dict[str, Any],
                   preprocess_cfg: dict[str, Any] | None = None, random_weights: bool = False) -> Path:
    """Save an open_clip model as a ``local-dir:`` folder (config + safetensors)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    if random_weights:  # recorded in every store built with it, and shown with every result
        config["random_weights"] = True
    write_bytes_atomic(folder / "open_clip_config.json", json.dumps(config, indent=2).encode())
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / "open_clip_model.safetensors") as tmp:
        save_file(state, str(tmp))
    return folder


