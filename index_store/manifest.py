"""The manifest of a store, typed: what every package reads instead of nested dict keys.

On disk it is ``manifest.json``. Version 4: ``spaces`` (each CLIP space: its kind, model and index, in order; the
first is the primary one), ``models.minilm`` and ``minilm_index``, ``build``, ``versions``, ``files`` and
``fragments`` (the fragment vocabulary's size, rule, statistics and its two indexes). Versions 1-3 had one CLIP
space, "clip", under ``models.clip`` and ``index`` (and no ``fragments`` in version 1). ``Manifest.from_dict``
validates any of them and ``to_dict`` writes the layout of the manifest's own version.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from nearest_prompt.common.errors import StoreError
from nearest_prompt.encoders.clip import ClipInfo
from nearest_prompt.encoders.minilm import MiniLMInfo

from .format import FORMAT_NAME, FORMAT_VERSION, FRAGMENT_SPACES, MANIFEST, MINILM_SPACE, PRIMARY, READABLE_VERSIONS


@dataclass(frozen=True)
class IndexInfo:
    """One space's FAISS index: type, parameters (as tuned at build), measured recall@10 vs exact."""

    type: str
    params: dict[str, Any]
    factory: str | None = None
    metric: str = "inner_product"
    dim: int | None = None
    ntotal: int | None = None
    recall_at_10: float | None = None
    recall_at_10_low: float | None = None  # the lowest kind of tuning query's mean less 2 standard errors
    ram_bytes: int | None = None  # resident when searching: codes, ids, quantizer (version 3)
    disk_bytes: int | None = None  # the index's files, and the vectors a refine stage pages in per query
    imbalance: float | None = None  # IVF: faiss's imbalance factor of the lists now (1: all the same size)
    imbalance_at_training: float | None = None  # ... when the lists were trained (rows added since drift it)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexInfo:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FileInfo:
    """Size and sha256 of a store file, plus one sha256 per ``block_bytes`` block (absent in stores
    written before block checksums existed: those are checked whole)."""

    bytes: int
    sha256: str
    block_bytes: int | None = None
    blocks: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileInfo:
        return cls(bytes=int(d["bytes"]), sha256=str(d["sha256"]), block_bytes=d.get("block_bytes"),
                   blocks=tuple(d.get("blocks") or ()))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bytes": self.bytes, "sha256": self.sha256}
        if self.block_bytes:
            out.update(block_bytes=self.block_bytes, blocks=list(self.blocks))
        return out


@dataclass(frozen=True)
class FragmentsInfo:
    """The fragment vocabulary (format version 2): rows, the mining rule and its statistics
    (``indexer.fragments``), and one FAISS index per space over the fragments' vectors."""

    rows: int
    indexes: dict[str, IndexInfo]
    rule: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FragmentsInfo:
        return cls(rows=int(d["rows"]), indexes={s: IndexInfo.from_dict(d["indexes"][s]) for s in FRAGMENT_SPACES},
                   rule=dict(d.get("rule") or {}), stats=dict(d.get("stats") or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "rule": self.rule, "stats": self.stats,
                "indexes": {s: info.to_dict() for s, info in self.indexes.items()}}


@dataclass(frozen=True)
class SpaceInfo:
    """A CLIP space: the prompts' text embeddings under one CLIP model (``kind`` "text"), or the CLIP image
    embeddings of the images the prompts made (``kind`` "image": ``of`` names the text space whose model embeds
    them; ``rows`` counts the prompts that have an image; ``images`` says how they were read)."""

    kind: str
    model: ClipInfo
    of: str | None = None
    rows: int | None = None
    images: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpaceInfo:
        if d.get("kind") not in ("text", "image"):
            raise ValueError(f"space kind {d.get('kind')!r}")
        return cls(kind=d["kind"], model=ClipInfo.from_dict(d["model"]), of=d.get("of"),
                   rows=None if d.get("rows") is None else int(d["rows"]), images=dict(d.get("images") or {}))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "model": self.model.to_dict()}
        if self.kind == "image":
            out.update(of=self.of, rows=self.rows, images=self.images)
        return out


@dataclass(frozen=True)
class Manifest:
    rows: int
    spaces: dict[str, SpaceInfo]  # the CLIP spaces, in order; the first is the primary one
    minilm: MiniLMInfo
    indexes: dict[str, IndexInfo]  # every space's index: the CLIP spaces' and "minilm"
    files: dict[str, FileInfo] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)  # config, sources, stats, seconds
    versions: dict[str, str] = field(default_factory=dict)
    created: str | None = None
    fragments: FragmentsInfo | None = None  # None in version-1 stores
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    @property
    def primary(self) -> str:
        """The first CLIP space: the default of every search, and the space of the fragments' CLIP vectors."""
        return next(iter(self.spaces))

    @property
    def clip(self) -> ClipInfo:
        """The primary space's CLIP model."""
        return self.spaces[self.primary].model

    def index(self, space: str) -> IndexInfo:
        return self.indexes[space]

    def to_dict(self) -> dict[str, Any]:
        head = {"format": self.format, "format_version": self.format_version, "rows": self.rows,
                "created": self.created}
        if self.format_version >= 4:
            layout = {"models": {"minilm": self.minilm.to_dict()},
                      "spaces": {name: {**info.to_dict(), "index": self.indexes[name].to_dict()}
                                 for name, info in self.spaces.items()},
                      "minilm_index": self.indexes[MINILM_SPACE].to_dict()}
        else:
            layout = {"models": {"clip": self.clip.to_dict(), "minilm": self.minilm.to_dict()},
                      "index": self.indexes[PRIMARY].to_dict(), "minilm_index": self.indexes[MINILM_SPACE].to_dict()}
        return {**head, **layout, "build": self.build, "versions": self.versions,
                "files": {name: f.to_dict() for name, f in self.files.items()},
                **({"fragments": self.fragments.to_dict()} if self.fragments is not None else {})}

    @classmethod
    def from_dict(cls, d: Any, *, where: str = MANIFEST) -> Manifest:
        """Validate a parsed manifest.json; ``StoreError`` saying what is wrong and what to do."""
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise StoreError(f"{where} is not a nearest-prompt manifest; rebuild the store")
        version = d.get("format_version")
        if version not in READABLE_VERSIONS:
            newer = isinstance(version, int) and version > FORMAT_VERSION
            fix = "upgrade nearest-prompt" if newer else "rebuild the store with this version"
            raise StoreError(f"format version {version!r} is not supported (this nearest-prompt reads "
                             f"{', '.join(map(str, READABLE_VERSIONS))}); {fix}")
        spaces_key = ("spaces",) if version >= 4 else ("index",)
        required = ("rows", "models", "files", "minilm_index", *spaces_key, *(("fragments",) if version >= 2 else ()))
        for key in required:
            if key not in d:
                raise StoreError(f"{where} lacks {key!r}; rebuild the store")
        try:
            if version >= 4:
                if not d["spaces"]:
                    raise ValueError("no CLIP space")
                spaces = {name: SpaceInfo.from_dict(s) for name, s in d["spaces"].items()}
                indexes = {name: IndexInfo.from_dict(s["index"]) for name, s in d["spaces"].items()}
            else:
                spaces = {PRIMARY: SpaceInfo(kind="text", model=ClipInfo.from_dict(d["models"]["clip"]))}
                indexes = {PRIMARY: IndexInfo.from_dict(d["index"])}
            indexes[MINILM_SPACE] = IndexInfo.from_dict(d["minilm_index"])
            return cls(
                rows=int(d["rows"]), created=d.get("created"), spaces=spaces,
                minilm=MiniLMInfo.from_dict(d["models"]["minilm"]), indexes=indexes,
                files={name: FileInfo.from_dict(f) for name, f in d["files"].items()},
                build=dict(d.get("build") or {}), versions=dict(d.get("versions") or {}),
                fragments=FragmentsInfo.from_dict(d["fragments"]) if version >= 2 else None,
                format_version=version,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"{where} is malformed ({type(e).__name__}: {e}); rebuild the store") from e
