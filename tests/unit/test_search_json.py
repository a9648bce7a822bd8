"""server/search.py writes, from a run's rows, the very JSON MLflow's handler path gives our
server for the same Run entity (entity -> protobuf -> server/jsonout.py -> compact JSON), on
random runs: special doubles, unicode, empty and missing values, unset end times and artifact
URIs, names from the run-name tag, inputs and outputs."""

from __future__ import annotations

import json
import random

import pytest

from mlflow_gcp.server import jsonout, search

DOUBLES = [0.0, -0.0, 1.5, -2.25, 0.1 + 0.2, 1e-300, 5e-324, 1.7976931348623157e308, 1e16, float("nan"),
           float("inf"), float("-inf"), 2.0**53 + 2]
STRINGS = ["", "a", "é\u2028\"\\\n\t", "x" * 300, "😀", "</script>", "日本"]


def random_run(rng):
    from mlflow.entities import (Dataset, DatasetInput, InputTag, LoggedModelInput, LoggedModelOutput, Run,
                                 RunInfo, RunInputs, RunOutputs)

    run_id = f"{rng.getrandbits(128):032x}"
    info = RunInfo(run_id=run_id, experiment_id=str(rng.randrange(0, 10**6)), user_id=rng.choice(STRINGS),
                   status=rng.choice(["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"]),
                   start_time=rng.choice([0, 1, 1_700_000_000_000, 2**63 - 1, -5]),
                   end_time=rng.choice([None, 0, 1_700_000_000_999]), lifecycle_stage=rng.choice(["active", "deleted"]),
                   artifact_uri=rng.choice([None, "", "gs://b/1/x/artifacts"]), run_name=rng.choice([None, "", "n", "é"]))
    metrics = [(run_id, f"m{k}{rng.choice(STRINGS)}", rng.choice(DOUBLES), rng.choice([0, -1, 2**62]),
                rng.choice([0, 3, -(2**63)]), False) for k in range(rng.randrange(0, 5))]
    metrics += [(run_id, "nan", 0.0, 1, 2, True)] * rng.randrange(0, 2)
    params = [(run_id, f"p{k}", rng.choice(STRINGS)) for k in range(rng.randrange(0, 5))]
    tags = [(run_id, f"t{k}", rng.choice(STRINGS + [None])) for k in range(rng.randrange(0, 5))]
    if rng.random() < 0.3:
        tags.append((run_id, "mlflow.runName", rng.choice(["tagged", ""])))
    datasets = [DatasetInput(Dataset("d", "dig", "local", "/x", schema=rng.choice([None, "{}"])),
                             tags=[InputTag("k", "v")]) for _ in range(rng.randrange(0, 2) if rng.random() < 0.3 else 0)]
    models = [LoggedModelInput("m-1")] if rng.random() < 0.2 else []
    outputs = RunOutputs([LoggedModelOutput("m-2", 4)] if rng.random() < 0.2 else [])
    return Run(info, None, RunInputs(dataset_inputs=datasets, model_inputs=models), outputs), metrics, params, tags


def mlflow_json(run, metrics, params, tags) -> dict:
    """What MLflow's handler path gives our server for the same run (server/store.py's _with_data
    entities, to_proto, jsonout)."""
    from mlflow.entities import Metric, Param, Run, RunData, RunTag
    from mlflow.utils.mlflow_tags import _get_run_name_from_tags

    run_tags = [RunTag(k, v) for _, k, v in tags]
    data = RunData(metrics=[Metric(k, float("nan") if nan else v, ts, step) for _, k, v, ts, step, nan in metrics],
                   params=[Param(k, v) for _, k, v in params], tags=run_tags)
    info = run.info
    if not info.run_name and (name := _get_run_name_from_tags(run_tags)):
        info._set_run_name(name)
    return jsonout.message_to_dict(Run(info, data, run.inputs, run.outputs).to_proto())


@pytest.mark.parametrize("seed", range(300))
def test_run_json_is_mlflows(seed):
    rng = random.Random(seed)
    run, metrics, params, tags = random_run(rng)
    want = mlflow_json(run, metrics, params, tags)
    # The store sets the name from the tag before writing (server/store.py search_runs_answer).
    got = search.answer_text([search.run_json(run, metrics, params, tags)], None)
    assert got == json.dumps({"runs": [want]}, separators=(",", ":"))


def test_answer_and_token_as_mlflows():
    from mlflow.protos.service_pb2 import SearchRuns
    from mlflow.utils.search_utils import SearchUtils

    token = SearchUtils.create_page_token(300)
    message = SearchRuns.Response(next_page_token=token.decode())
    assert search.answer_text([], token) == json.dumps(jsonout.message_to_dict(message), separators=(",", ":"))
    assert search.answer_text([], None) == "{}" == json.dumps(jsonout.message_to_dict(SearchRuns.Response()))


def test_null_metric_timestamp_goes_to_mlflow():
    run, _, _, _ = random_run(random.Random(1))
    with pytest.raises(search.Fallback):
        search.run_json(run, [(run.info.run_id, "m", 1.0, None, 0, False)], [], [])


_JSON = [(b"content-type", b"application/json")]
_PLAIN = {"experiment_ids": ["1"], "filter": "metrics.m0 >= 0", "run_view_type": "ALL", "max_results": 100,
          "order_by": ["metrics.m0 DESC"], "page_token": "tok"}


@pytest.mark.parametrize("change", [
    {"experiment_ids": "1"}, {"experiment_ids": [1]}, {"experimentIds": ["1"]}, {"filter": 5}, {"filter": None},
    {"run_view_type": 1}, {"run_view_type": "SOMETIMES"}, {"max_results": 0}, {"max_results": 50001},
    {"max_results": "100"}, {"max_results": 100.0}, {"max_results": True}, {"order_by": "metrics.m0"},
    {"order_by": [None]}, {"page_token": 5}, {"unknown": 1},
])
def test_a_search_body_of_any_other_shape_is_mlflows(change):
    assert search.plain_search(_JSON, json.dumps(_PLAIN).encode()) == (
        ["1"], "metrics.m0 >= 0", "ALL", 100, ["metrics.m0 DESC"], "tok")
    assert search.plain_search(_JSON, json.dumps({**_PLAIN, **change}).encode()) is None


@pytest.mark.parametrize("headers, body", [
    ([], b"{}"), ([(b"content-type", b"text/plain")], b"{}"), (_JSON + [(b"origin", b"http://x")], b"{}"),
    (_JSON + _JSON, b"{}"), (_JSON, b"not json"), (_JSON, b"[]"), (_JSON, b'"{}"'),
])
def test_search_headers_and_documents_mlflow_judges(headers, body):
    with_charset = [(b"content-type", b"application/json; charset=utf-8")]
    assert search.plain_search(with_charset, b"{}") == ([], "", None, None, [], None)
    assert search.plain_search(headers, body) is None
