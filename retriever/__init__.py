"""Query an index store: ``Retriever.open(dir)`` with ``.search``, ``.predict``, ``.prompts``."""

from .api import DEFAULT_K_PREDICT, DEFAULT_K_QUERY, EmbeddedImages, Retriever
from .search import Neighbors, search
from .submission import read_submission, write_npy, write_submission
from .weighting import Prediction, Weighting, blend, neighbor_weights

__all__ = ["Retriever", "Neighbors", "Prediction", "Weighting", "EmbeddedImages", "search", "blend",
           "neighbor_weights", "read_submission", "write_submission", "write_npy",
           "DEFAULT_K_QUERY", "DEFAULT_K_PREDICT"]
