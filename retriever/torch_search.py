"""Exact inner-product search with torch (matmul + top-k), for GPUs without faiss-gpu.

``TorchFlatIndex`` keeps the database on the device (float16 on CUDA, float32
on CPU) and answers ``search(queries, k) -> (scores, ids)`` like a FAISS
index, so ``retriever.search`` takes either. The database is scanned in
chunks and the per-chunk top-k merged, so memory stays bounded by
``queries x chunk``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class TorchFlatIndex:
    def __init__(self, vectors: Any, *, device: str = "cuda", chunk: int = 1 << 20, dtype: Any = None):
        """``vectors``: an array [n, d], or a callable ``(start, stop) -> float32 rows`` plus
        ``ntotal``/``d`` attributes (see ``from_faiss``); moved to the device chunk by chunk."""
        import torch

        self.device = device
        self.dtype = dtype or (torch.float16 if device.startswith("cuda") else torch.float32)
        self.chunk = chunk
        self.ntotal, self.d = int(vectors.shape[0]), int(vectors.shape[1])
        self._db = [torch.from_numpy(np.ascontiguousarray(vectors[s:min(s + chunk, self.ntotal)], dtype=np.float32))
                    .to(device=device, dtype=self.dtype) for s in range(0, self.ntotal, chunk)]

    @classmethod
    def from_faiss(cls, index: Any, **kw: Any) -> TorchFlatIndex:
        """From a FAISS flat index: its stored vectors, copied one chunk at a time."""
        import faiss

        flat = faiss.downcast_index(index)
        if not isinstance(flat, faiss.IndexFlat):
            raise ValueError(f"the torch search path needs a flat index, not {type(flat).__name__}")
        return cls(_FaissRows(flat), **kw)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device, self.dtype)
        best_s = torch.full((len(q), k), -float("inf"), device=self.device, dtype=torch.float32)
        best_i = torch.full((len(q), k), -1, device=self.device, dtype=torch.int64)
        offset = 0
        with torch.inference_mode():
            for block in self._db:
                s = (q @ block.T).float()
                kk = min(k, s.shape[1])
                top_s, top_i = torch.topk(s, kk, dim=1)
                cand_s = torch.cat([best_s, top_s], dim=1)
                cand_i = torch.cat([best_i, top_i + offset], dim=1)
                best_s, pos = torch.topk(cand_s, k, dim=1)
                best_i = torch.gather(cand_i, 1, pos)
                offset += block.shape[0]
        return best_s.cpu().numpy(), best_i.cpu().numpy()


class _FaissRows:
    """Row slices of a FAISS flat index, read with ``reconstruct_n``."""

    def __init__(self, index: Any):
        self.index = index
        self.shape = (int(index.ntotal), int(index.d))

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        return self.index.reconstruct_n(start, stop - start)


def faiss_gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def to_search_backend(index: Any, backend: str, *, device: str | None = None) -> Any:
    """``faiss`` (CPU, all threads), ``faiss-gpu``, ``torch`` (flat indexes), or ``auto``:
    faiss-gpu if installed with a GPU, else torch on CUDA for flat indexes, else faiss CPU."""
    import faiss

    from nearest_prompt.common.device import resolve_device
    from nearest_prompt.common.errors import InputError

    if backend not in ("auto", "faiss", "faiss-gpu", "torch"):
        raise InputError(f"search backend must be auto, faiss, faiss-gpu or torch, not {backend!r}")
    if backend == "auto":
        if faiss_gpu_available():
            backend = "faiss-gpu"
        elif resolve_device(device).startswith("cuda") and isinstance(faiss.downcast_index(index), faiss.IndexFlat):
            backend = "torch"
        else:
            backend = "faiss"
    if backend == "faiss":
        return index
    if backend == "faiss-gpu":
        if not faiss_gpu_available():
            raise InputError("faiss-gpu is not installed or sees no GPU; use the torch or faiss backend",
                             param="search_backend")
        return faiss.index_cpu_to_all_gpus(index)
    try:
        return TorchFlatIndex.from_faiss(index, device=resolve_device(device))
    except ValueError as e:
        raise InputError(f"{e}; use the faiss backend", param="search_backend") from e
