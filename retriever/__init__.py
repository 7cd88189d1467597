"""Query an index store: ``Retriever.open(dir)`` with ``.search``, ``.predict``, ``.query``, ``.prompts``."""

from .api import DEFAULT_K_PREDICT, DEFAULT_K_QUERY, EmbeddedImages, QueryResult, Retriever
from .plans import SearchPlan
from .search import SPACES, Neighbors, search
from .weighting import Prediction, Weighting, blend, neighbor_weights

__all__ = ["Retriever", "SearchPlan", "Neighbors", "Prediction", "Weighting", "EmbeddedImages", "QueryResult", "search",
           "blend", "neighbor_weights", "SPACES", "DEFAULT_K_QUERY", "DEFAULT_K_PREDICT"]
