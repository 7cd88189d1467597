"""The HTTP service: the library's query, predict and interrogate over FastAPI, micro-batched, bounded, with
a web page.

An adapter like the CLI (the top floor): it parses requests, calls ``retriever`` and ``composer`` and
prints JSON.
``settings`` (options), ``batcher`` (requests share one CLIP forward pass), ``schemas`` (request and
response models, the OpenAPI document), ``parsing`` (JSON or multipart bodies, images, one-line client
errors), ``metrics`` (Prometheus), ``app`` (routes, limits, errors, reload), ``server`` (uvicorn,
signals), ``static/`` (the page).
"""
