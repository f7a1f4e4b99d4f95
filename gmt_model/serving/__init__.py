"""gmt_model.serving: the live router, feedback, HTTP server, registry and CLI (may import every layer)."""
