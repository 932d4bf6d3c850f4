"""Training, evaluation and data preparation: never imported by a worker."""
