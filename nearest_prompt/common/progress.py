"""Progress bars (tqdm, on stderr) that callers can switch off."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(*, total: int | None, desc: str, enabled: bool, unit: str = "prompt") -> tqdm:
    """A bar with count, rate and ETA; a no-op object when ``enabled`` is False."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=total is None or total >= 10_000,
        disable=not enabled,
        dynamic_ncols=True,
        smoothing=0.1,
    )
