"""Pick a torch device."""

from __future__ import annotations


def resolve_device(device: str | None) -> str:
    """``None`` or ``"auto"`` picks CUDA when present, else CPU."""
    import torch

    from .errors import InputError

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return device
