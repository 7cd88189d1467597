"""Competition tools on top of the retriever: scoring against baselines (``evaluate``), the eval run
itself (``run``), plots, submission files, ensembles, and the readers of their input files
(``inputs``)."""
