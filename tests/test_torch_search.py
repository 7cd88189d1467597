"""The torch search path (GPU without faiss-gpu) and the faiss-gpu path against exact faiss search."""

import numpy as np
import pytest
import torch

from nearest_prompt.common.topk import recall_at_k
from nearest_prompt.retriever.search import search
from nearest_prompt.retriever.torch_search import TorchFlatIndex, faiss_gpu_available, to_search_backend

from .conftest import unit


@pytest.fixture
def base(rng):
    return unit(rng.normal(size=(3000, 48))), unit(rng.normal(size=(25, 48)))


def _flat(x):
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


def test_torch_flat_equals_faiss_flat_on_cpu(base):
    x, q = base
    exact = search(_flat(x), q, k=10)
    got = search(TorchFlatIndex(x, device="cpu", chunk=700), q, k=10)  # several chunks merged
    np.testing.assert_array_equal(got.ids, exact.ids)
    np.testing.assert_allclose(got.scores, exact.scores, atol=1e-5)


def test_from_faiss_reads_stored_vectors(base):
    x, q = base
    t = TorchFlatIndex.from_faiss(_flat(x), device="cpu")
    assert (t.ntotal, t.d) == x.shape
    np.testing.assert_array_equal(search(t, q, k=5).ids, search(_flat(x), q, k=5).ids)


def test_retriever_torch_backend_matches_faiss(retriever):
    from nearest_prompt.retriever import Retriever

    q = retriever.embed_texts(["a castle", "a cat", "a spaceship"])
    exact = retriever.search(q, k=7)
    torch_backed = Retriever(retriever.store, clip=retriever.clip).use_search_backend("torch")  # not the shared one
    got = torch_backed.search(q, k=7)
    np.testing.assert_array_equal(got.ids, exact.ids)
    np.testing.assert_allclose(got.scores, exact.scores, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_torch_flat_on_cuda_fp16(base):
    x, q = base
    exact = search(_flat(x), q, k=10)
    got = search(TorchFlatIndex(x, device="cuda"), q, k=10)
    recall = recall_at_k(got.ids, exact.ids)
    assert recall >= 0.99  # float16 may swap near-ties
    np.testing.assert_allclose(got.scores, exact.scores, atol=2e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not faiss_gpu_available(), reason="faiss-gpu not installed or no GPU (faiss-cpu only here)")
def test_faiss_gpu_backend(base):
    x, q = base
    index = _flat(x)
    np.testing.assert_array_equal(search(to_search_backend(index, "faiss-gpu"), q, k=10).ids,
                                  search(index, q, k=10).ids)
