"""The models: the CLIP encoder (open_clip), the MiniLM encoder (sentence-transformers), and image
loading. Loaded lazily, on the device the caller picks; everything above takes their vectors."""
