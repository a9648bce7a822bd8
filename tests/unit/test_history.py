"""server/history.py: which requests it answers, and that its JSON is MLflow's text for the rows."""

from __future__ import annotations

import json
import random

from mlflow_gcp.server.history import parse, rows_json

RUN = "a" * 32


def test_the_client_shape_and_the_uis_are_answered_anything_else_is_mlflows():
    assert parse(f"run_uuid={RUN}&run_id={RUN}&metric_key=loss&max_results=25000".encode()) == (RUN, "loss", 25000, None)
    assert parse(f"run_id={RUN}&metric_key=a%20b&page_token=eyJ9".encode()) == (RUN, "a b", None, "eyJ9")
    for query in [
        f"run_uuid={RUN}&metric_key=loss",  # MLflow requires run_id
        f"run_id={RUN}&run_uuid={'b' * 32}&metric_key=loss",
        f"run_id={RUN}",
        f"run_id={RUN}&metric_key=loss&max_results=0",
        f"run_id={RUN}&metric_key=loss&max_results=-1",
        f"run_id={RUN}&metric_key=loss&max_results=+5",
        f"run_id={RUN}&metric_key=loss&max_results=2147483648",
        f"run_id={RUN}&metric_key=loss&metric_key=acc",
        f"run_id={RUN}&metric_key=loss&extra=1",
        "run_id=%ff&metric_key=loss",
    ]:
        assert parse(query.encode()) is None, query


def test_rows_are_written_as_mlflows_compact_json():
    from mlflow.entities import Metric
    from mlflow.protos.service_pb2 import GetMetricHistory
    from mlflow.utils.proto_json_utils import message_to_json

    rng = random.Random(7)
    specials = [float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1e300, 0.1, 2.0, -3.5]
    rows = []
    for i in range(300):
        value = rng.choice(specials) if i % 5 == 0 else rng.uniform(-1e6, 1e6)
        nan = value != value
        rows.append((0.0 if nan else value, rng.randrange(0, 1 << 62), rng.randrange(-(1 << 40), 1 << 40), nan))
    key = 'lo"ss/é'
    response = GetMetricHistory.Response()
    response.metrics.extend(
        [Metric(key, float("nan") if nan else v, ts, step).to_proto() for v, ts, step, nan in rows])
    expected = message_to_json(response, pretty=False)
    assert '{"metrics":[' + rows_json(json.dumps(key), rows) + "]}" == expected
