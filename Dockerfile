# The MLflow tracking server image: `python -m mlflow_gcp.server` validates the environment Cloud Run
# sets, waits for Cloud SQL, migrates once, then supervises uvicorn serving MLflow's app (docs/server.md, docs/benchmarks.md).
# Every version comes from constraints.txt, the lock file the tests and CI install too, except
# MLflow's own three packages when MLFLOW_VERSION (service.mlflow_version) names another release of
# the series config.py supports: their pins are rewritten together and the build checks the result.
FROM python:3.11-slim

ARG MLFLOW_VERSION=3.17.2

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8080 \
    LOG_FORMAT=json \
    MLFLOW_GCP_UI_CACHE=/app/ui-gzip

WORKDIR /app
COPY constraints.txt pyproject.toml README.md ./
COPY src ./src
# psycopg2-binary and every other dependency ship manylinux wheels: no compiler, no apt layer.
# A version pip cannot find fails the build; one it installs differently fails the check below.
RUN sed -E "s/^(mlflow|mlflow-skinny|mlflow-tracing)==.*/\1==${MLFLOW_VERSION}/" constraints.txt > /tmp/constraints.txt \
    && pip install --no-cache-dir -c /tmp/constraints.txt . \
    && python -c 'import sys, mlflow; v = mlflow.__version__; sys.exit(None if v == sys.argv[1] else f"installed MLflow {v}, not {sys.argv[1]}")' "${MLFLOW_VERSION}" \
    && rm /tmp/constraints.txt \
    && python -m mlflow_gcp.server.uiassets /app/ui-gzip \
    && useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin mlflow

# The UI's files are gzip-compressed once here (server/uiassets.py; ~27 MB -> ~7 MB on the wire).
# Never root; no secret is baked in (DB_PASSWORD comes from Secret Manager at run time).
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m", "mlflow_gcp.server"]
