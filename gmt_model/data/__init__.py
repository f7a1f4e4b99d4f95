"""gmt_model.data: data in and out: formats, sources, conversion, datasets, embeddings (imports method)."""
