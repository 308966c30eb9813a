"""Building blocks of the model files: attention over the paged cache, rotary embeddings, norms."""
