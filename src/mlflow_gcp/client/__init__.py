"""Client side: the MLflow auth plugin (`auth`), ID tokens (`tokens`), the UI proxy (`proxy`).

Imports stay light here: a training job imports this package and nothing of the control plane.
"""
