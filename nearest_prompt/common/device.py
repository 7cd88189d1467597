"""Pick a torch device."""

from __future__ import annotations

from .errors import InputError


def resolve_device(device: str | None) -> str:
    """``None`` or ``"auto"`` picks CUDA when present, else CPU; anything else must be a torch device
    that this machine has."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise InputError(f"{device!r} is not a torch device; use cpu, cuda or cuda:N (or auto)",
                         param="device") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{device}: CUDA is not available on this machine; use cpu", param="device")
    return device
