"""The ground floor: pieces every other package may use, importing nothing of ours.

``errors`` (the exception hierarchy), ``progress`` (tqdm bars), ``device``
(torch device choice), ``atomic`` (the one write-to-temp-then-replace helper),
``checksums`` (file digests, weight fingerprints), ``text`` (prompt cleaning and
the exact-dedup key), ``topk`` (the one chunked top-k merge and recall@k),
``sizes`` (byte counts for people), ``version`` (this package's and its libraries' versions).
"""
