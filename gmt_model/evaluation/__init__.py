"""gmt_model.evaluation: metrics, baselines and the evaluation report (imports method and data)."""
