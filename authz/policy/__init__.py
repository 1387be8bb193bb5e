"""AccessPolicy: the model (fields and validation), the compiled index, and the pure evaluator."""
