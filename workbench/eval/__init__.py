"""Evaluation: request formats and loaders, teacher-forced scoring, metrics, batched evaluation."""
