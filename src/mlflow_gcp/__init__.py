"""mlflow-gcp: a private, durable, cheap MLflow tracking server on Google Cloud."""

__version__ = "0.1.0"
