"""Write a store into a staging directory, then swap it into place atomically."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from nearest_prompt.common.atomic import TMP_MARK, fsync_dir, replace_dir, temp_sibling, write_bytes_atomic
from nearest_prompt.common.checksums import file_digests
from nearest_prompt.common.errors import InputError, StoreError

from .format import (
    BLOCK_BYTES,
    FRAGMENT_INDEX_FILES,
    FRAGMENT_VECTORS,
    FRAGMENTS,
    MANIFEST,
    MINILM,
    MINILM_SPACE,
    PROMPTS,
    files_of,
    index_file,
    rows_file,
    space_name_problem,
    vectors_file,
)
from .manifest import FileInfo, Manifest
from .reader import foreign_entries, is_store

log = logging.getLogger(__name__)


def check_target(out: str | Path) -> Path:
    """Refuse an ``out`` that would destroy something that is not a store.

    A store is recognised by its manifest (format name and version) and the files it lists, never by
    a file name alone: a folder holding some other ``manifest.json`` is refused, and nothing in it is
    touched."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; give a directory for the index store", param="out")
    if out.is_dir() and any(out.iterdir()) and not is_store(out):
        raise InputError(
            f"{out} is a non-empty directory that is not an index store (nothing in it was touched); choose a "
            "new or empty directory, or remove it yourself if it is a damaged store", param="out")
    if out.is_dir() and is_store(out):
        foreign = foreign_entries(out)
        if foreign:  # replacing the store would delete them
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise InputError(f"{out} holds files the index store did not write ({shown}); a new store replaces the "
                             "whole folder, so move them out of it first (nothing was touched)", param="out")
    return out


def orphans(out: str | Path) -> list[Path]:
    """Staging (``.NAME.tmp-*``) and set-aside (``.NAME.old-*``) folders of the store ``out`` that a killed
    build left behind. Only call it while holding the build lock of ``out``."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    prefixes = (f".{out.name}{TMP_MARK}", f".{out.name}.old-")
    return sorted(p for p in out.parent.iterdir() if p.is_dir() and p.name.startswith(prefixes))


def _checked(space: str) -> str:
    name = space[:-len("-image")] if space.endswith("-image") else space
    if space != MINILM_SPACE and space_name_problem(name):
        raise ValueError(f"not a space name: {space!r}")
    return space


class StoreWriter:
    """Collects the files of a store in ``.NAME.tmp-*`` beside ``out``.

    Use as a context manager: leaving with an exception (or without
    ``commit``) deletes the staging directory and leaves ``out`` untouched.
    """

    def __init__(self, out: str | Path):
        self.out = check_target(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.staging = temp_sibling(self.out)
        self.staging.mkdir()
        self._committed = False

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._committed:
            shutil.rmtree(self.staging, ignore_errors=True)

    def write_prompts(self, prompts: Sequence[str] | pa.Array | pa.ChunkedArray | Iterator[pa.Array | pa.RecordBatch]
                      ) -> int:
        """Write the prompt table (row id, prompt, and the columns kept beside the prompts) from prompts, or
        from an iterator of Arrow string blocks or record batches (prompt first) given in order (streamed: one
        block in memory at a time). Returns the row count."""
        if isinstance(prompts, pa.ChunkedArray):
            blocks: Iterable[pa.Array | pa.RecordBatch] = prompts.chunks
        elif isinstance(prompts, pa.Array):
            blocks = [prompts]
        elif isinstance(prompts, Iterator):
            blocks = prompts
        else:
            blocks = [pa.array(list(prompts), type=pa.string())]
        rows = 0
        writer = None
        with pa.OSFile(str(self.staging / PROMPTS), "wb") as sink:
            try:
                for block in blocks:
                    batch = block if isinstance(block, pa.RecordBatch) else pa.record_batch([block], names=["prompt"])
                    schema = pa.schema([("id", pa.int64()), *batch.schema])  # the store's own (with ids)
                    if writer is None:
                        writer = pa.ipc.new_file(sink, schema)
                    for start in range(0, batch.num_rows, 65536):
                        part = batch.slice(start, 65536)
                        ids = pa.array(np.arange(rows, rows + part.num_rows, dtype=np.int64))
                        writer.write_batch(pa.record_batch([ids, *part.columns], schema=schema))
                        rows += part.num_rows
                if writer is None:
                    writer = pa.ipc.new_file(sink, pa.schema([("id", pa.int64()), ("prompt", pa.string())]))
            finally:
                if writer is not None:
                    writer.close()
        return rows

    def write_minilm(self, blocks: Iterable[np.ndarray], *, rows: int, dim: int) -> None:
        """Write the float16 [rows, dim] MiniLM matrix from row blocks given in order."""
        self.write_matrix(MINILM, blocks, rows=rows, dim=dim)

    def write_fragments(self, fragments: pa.Array, counts: np.ndarray) -> None:
        """The fragment vocabulary's table: id (= row), fragment, count (prompts holding it)."""
        schema = pa.schema([("id", pa.int64()), ("fragment", pa.string()), ("count", pa.int64())])
        table = pa.table([pa.array(np.arange(len(fragments), dtype=np.int64)), fragments,
                          pa.array(np.asarray(counts, dtype=np.int64))], schema=schema)
        with pa.OSFile(str(self.staging / FRAGMENTS), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            writer.write_table(table, max_chunksize=65536)

    def fragment_vectors_path(self, space: str) -> Path:
        return self.staging / FRAGMENT_VECTORS[space]

    def fragment_index_path(self, space: str) -> Path:
        return self.staging / FRAGMENT_INDEX_FILES[space]

    def write_matrix(self, name: str, blocks: Iterable[np.ndarray], *, rows: int, dim: int) -> None:
        """Write a float16 [rows, dim] ``.npy`` file of the store from row blocks given in order.

        Plain buffered writes, not a writable memmap: dirty pages of a
        mapping count in the process's resident set until written back.
        """
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False,
                  "shape": (rows, dim)}
        written = 0
        with open(self.staging / name, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            for block in blocks:
                block = np.ascontiguousarray(block, dtype=np.float16)
                if block.ndim != 2 or block.shape[1] != dim:
                    raise StoreError(f"internal error: {name} block of shape {block.shape}, expected (*, {dim})")
                f.write(block.data)
                written += len(block)
        if written != rows:
            raise StoreError(f"internal error: {written} rows written to {name}, {rows} expected")

    @property
    def minilm_path(self) -> Path:
        return self.staging / MINILM

    def index_path(self, space: str) -> Path:
        """Where the FAISS index of ``space`` (a CLIP space, ``NAME-image``, or ``minilm``) is to be written (IVF
        indexes put their lists beside it, a block at a time: ``indexer.ivf_blocks``)."""
        return self.staging / index_file(_checked(space))

    def vectors_path(self, space: str) -> Path:
        """Where the float16 vectors of ``space`` go (``write_matrix(vectors_path(space).name, ...)``)."""
        return self.staging / vectors_file(_checked(space))

    def rows_path(self, space: str) -> Path:
        """Where an image space's row mask goes (bool [rows]: the prompts that have an image)."""
        return self.staging / rows_file(_checked(space))

    def final_path(self, staged: Path) -> Path:
        """Where a file of the staging folder will be once the store is in place."""
        return self.out / Path(staged).relative_to(self.staging)

    def commit(self, manifest: Manifest) -> Path:
        """Checksum every file written (whole and per 64 MiB block), write the manifest, move the store to
        ``out``."""
        files = {}
        for name in files_of(manifest.format_version):
            if not (self.staging / name).is_file():
                raise StoreError(f"internal error: {name} was not written")
        for path in sorted(self.staging.iterdir()):
            name = path.name
            if name == MANIFEST or not path.is_file():
                continue
            whole, blocks = file_digests(path, block_bytes=BLOCK_BYTES)
            files[name] = FileInfo(bytes=path.stat().st_size, sha256=whole, block_bytes=BLOCK_BYTES,
                                   blocks=tuple(blocks))
        manifest = dataclasses.replace(manifest, files=files)
        write_bytes_atomic(self.staging / MANIFEST, json.dumps(manifest.to_dict(), indent=2, default=str).encode())
        fsync_dir(self.staging)
        check_target(self.out)  # something may have appeared there during a long build
        replace_dir(self.staging, self.out)
        self._committed = True
        log.debug("wrote index store %s", self.out)
        return self.out
