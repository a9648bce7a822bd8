"""The server container's entrypoint: validate the environment, wait for the database, migrate
once, then run and supervise `mlflow server`.

Imports nothing from cli/, ops/, plan/ or gcp/ (the image and its start-up stay small); MLflow
itself is imported only where a step needs it.
"""
