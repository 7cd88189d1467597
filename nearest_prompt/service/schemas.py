"""Request and response models: they validate every body and make the OpenAPI document.

Each endpoint that takes images has a JSON model (images as base64) and a form model for multipart
uploads (images as files in the field ``image``); both share one model of the options. Unknown fields are
refused (``extra="forbid"``), except in the clip back protocol, whose clients send fields this service
accepts and ignores (listed in ``KnnRequest``).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field

MAX_K = 10_000  # also bounded by the index size at run time
MAX_IMAGES = 256  # per predict request
MAX_TEXT = 10_000  # characters of a text query or caption
MAX_EMBEDDING = 8192  # numbers in a query vector
MAX_WHERE = 2_000  # characters of a filter

WHERE = Field(None, max_length=MAX_WHERE, description="search only the prompts whose kept columns match, e.g. "
              "'source=lexica', 'source in (lexica,krea)', 'seed>=10 and seed<20' (docs/filters.md)")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpaceOptions(Strict):
    """Which CLIP spaces the search uses (docs/spaces.md): one of ``space``, ``cascade``, ``fuse``."""

    space: str | None = Field(None, max_length=64, description="a space of the index (default: its first CLIP space; "
                              "NAME-image for an image space; minilm for a text)")
    cascade: str | None = Field(None, max_length=200, description="'A:N,B': the top N of space A scored again "
                                "exactly in space B")
    fuse: str | None = Field(None, max_length=200, description="'A,B': each space's top k, scored exactly in each "
                             "and summed with fuse_weights")
    fuse_weights: list[float] | None = Field(None, max_length=16, description="one weight per fused space, scaled "
                                             "to sum to 1 (default: equal)")
    min_score: float | None = Field(None, ge=-1, le=1, description="drop neighbours whose final score is below it")


class ErrorResponse(BaseModel):
    error: str = Field(description="one line naming the problem and the fix")


# -- query ------------------------------------------------------------------------------------------------
class QueryOptions(SpaceOptions):
    k: int = Field(10, ge=1, le=MAX_K, description="neighbours to return (at most the index size)")
    where: str | None = WHERE


class QueryRequest(QueryOptions):
    """Exactly one of ``image`` (base64), ``text`` or ``embedding`` (a CLIP-space vector)."""

    image: str | None = Field(None, description="base64 of an image file (PNG, JPEG, WebP, ...)")
    text: str | None = Field(None, max_length=MAX_TEXT, description="searched through the CLIP text encoder")
    embedding: list[float] | None = Field(None, max_length=MAX_EMBEDDING, description="a CLIP-space query vector")


class QueryForm(QueryOptions):
    image: list[UploadFile] = Field(description="one image file")


class Neighbor(BaseModel):
    id: int
    prompt: str
    score: float
    weight: float = Field(description="its share of a prediction blended from these neighbours (they sum to 1)")
    metadata: dict[str, Any] = Field(default_factory=dict, description="the columns the index keeps beside it")


class QueryResponse(BaseModel):
    neighbors: list[Neighbor]
    search: str | None = Field(None, description="the spaces searched: 'space clip', 'cascade big:60,clip', ...")
    note: str | None = None


# -- predict ----------------------------------------------------------------------------------------------
class PredictOptions(SpaceOptions):
    k: int = Field(100, ge=1, le=MAX_K)
    weighting: Literal["power", "softmax"] = "power"
    power: float = Field(6.0, gt=0, le=1e6)
    eps: float = Field(1e-6, gt=0, le=1e6)
    temperature: float = Field(0.01, gt=0, le=1e6)
    caption_weight: float = Field(1.0, ge=0, le=1e6)
    caption_space: str = Field("clip", max_length=64, description="the space captions are searched in: a CLIP space "
                               "of the index ('clip': its first one) or minilm")
    caption_images: bool = Field(False, description="caption the images that have no caption with the server's "
                                                     "captioner (serve --captioner) and fuse them")
    where: str | None = WHERE


class PredictRequest(PredictOptions):
    images: list[str] = Field(..., min_length=1, max_length=MAX_IMAGES, description="base64 image files")
    captions: list[str | None] | None = Field(None, max_length=MAX_IMAGES,
                                              description="one caption per image (null: none), fused with it")


class PredictForm(PredictOptions):
    image: list[UploadFile] = Field(max_length=MAX_IMAGES, description="the image files, in order")
    captions: str | None = Field(None, max_length=MAX_IMAGES * (MAX_TEXT + 8),
                                 description='a JSON list with one caption per image (null: none), e.g. ["a cat", null]')


class PredictResult(BaseModel):
    vector: list[float] = Field(description="unit 384-d all-MiniLM-L6-v2 vector (zeros without neighbours)")
    confidence: float
    top_score: float | None


class PredictResponse(BaseModel):
    results: list[PredictResult]
    note: str | None = None


# -- interrogate ------------------------------------------------------------------------------------------
class InterrogateOptions(SpaceOptions):
    caption: str | None = Field(None, max_length=MAX_TEXT, description="starts the prompt (e.g. from a captioner; "
                                "without one, the server's captioner writes it when it has one)")
    mode: Literal["best", "fast", "classic"] = "best"
    objective: Literal["minilm", "clip"] = "minilm"
    start: Literal["prompt", "clause"] = "prompt"
    k: int = Field(10, ge=1, le=MAX_K, description="neighbours blended into the minilm objective's target")
    neighbors: int = Field(10, ge=1, le=200, description="neighbour prompts whose clauses are candidates")
    fragments: int | None = Field(None, ge=0, le=1000, description="nearest vocabulary fragments that are "
                                  "candidates (null: 0 for minilm, 50 for clip)")
    where: str | None = WHERE


class InterrogateRequest(InterrogateOptions):
    """One image (base64 here, or a multipart file in ``image``), optionally its caption (the subject)."""

    image: str = Field(..., description="base64 of an image file")


class InterrogateForm(InterrogateOptions):
    image: list[UploadFile] = Field(description="one image file")


class ComponentOut(BaseModel):
    text: str
    source: Literal["caption", "prompt", "neighbour", "fragment"]
    similarity: float | None
    score: float | None = Field(description="the objective once this part was appended (null: not scored)")
    estimated: bool = Field(False, description="true when score is the composer's estimate, not an exact encoding")


class InterrogateResponse(BaseModel):
    prompt: str = Field(description="the composed prompt, to paste into a generator")
    objective: Literal["minilm", "clip"]
    score: float | None
    clip_similarity: float | None = Field(description="the prompt's CLIP similarity to the image")
    tokens: int
    components: list[ComponentOut]
    minilm: list[float] = Field(description="the prompt's unit 384-d all-MiniLM-L6-v2 vector")
    neighbors: list[Neighbor] = Field(default_factory=list, description="the neighbours whose clauses were "
                                      "candidates, with their weights in the target and their kept columns")
    caption: str | None = None
    note: str | None = None


# -- operations -------------------------------------------------------------------------------------------
class HealthResponse(BaseModel):
    status: Literal["ok"]
    rows: int
    token_required: bool = Field(description="whether the other endpoints need 'Authorization: Bearer TOKEN'")


class ReloadResponse(BaseModel):
    status: Literal["reloaded"]
    rows: int


# -- clip-retrieval's clip back protocol ------------------------------------------------------------------
class KnnRequest(BaseModel):
    """clip-retrieval's ``/knn-service`` body. Accepted and ignored: use_mclip, aesthetic_score,
    aesthetic_weight, deduplicate, use_safety_model, use_violence_detector (and any other field its client
    sends). ``modality`` "image" searches the image space of the first CLIP space when the index has one (the
    CLIP image vectors of the prompts' images), else the prompts; "text" the prompts."""

    model_config = ConfigDict(extra="allow")

    text: str | None = Field(None, max_length=MAX_TEXT)
    image: str | None = None
    image_url: str | None = None
    embedding_input: list[float] | None = Field(None, max_length=MAX_EMBEDDING)
    modality: Literal["image", "text"] = Field("image", description="image: the index's image space when it has "
                                                "one (the prompts' images), else its prompts; text: its prompts")
    num_images: int = Field(40, ge=1, le=MAX_K)
    num_result_ids: int | None = Field(None, ge=1, le=MAX_K)
    indice_name: str | None = None


class KnnResult(BaseModel):
    id: int
    similarity: float
    caption: str


class MetadataRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    ids: list[int] = Field(..., max_length=MAX_K)
    indice_name: str | None = None


class MetadataItem(BaseModel):
    id: int
    metadata: dict[str, Any] = Field(description="caption (the prompt) and the columns the index keeps beside it")
