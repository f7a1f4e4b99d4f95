"""gmt_model.method: the method: what is trained and how (imports no other layer)."""
