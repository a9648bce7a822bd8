"""Our store's search (server/search_query.py: MLflow's _search_runs with the runs read from its
statement's rows) finds exactly what MLflow's own _search_runs finds, on one database, so ties
broken by run id are compared too: filters, orders, page tokens walked to the end, view types,
deleted runs, runs a dataset filter joins twice, runs with dataset inputs and logged-model
outputs, max_results edges, and MLflow's errors for what it refuses; each request asked twice,
the second time from the statement kept for it."""

from __future__ import annotations

import json

import pytest

from mlflow_gcp.server import search_query
from mlflow_gcp.server import store as store_mod

T0 = 1_700_000_000_000


def test_the_copy_is_of_this_mlflows_search_runs():
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    assert search_query.reader(SqlAlchemyStore) is not None

    class Changed(SqlAlchemyStore):
        def _search_runs(self, *args, **kwargs):  # another MLflow's method: its own runs
            return super()._search_runs(*args, **kwargs)

    assert search_query.reader(Changed) is None
    assert search_query.reader(object) is None


@pytest.fixture(scope="module")
def seeded(new_database, tmp_path_factory):
    from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelOutput, Metric, Param, RunStatus, RunTag

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(store_mod.BULK_ENV, "1")
        store = store_mod.build_store(new_database("mlflow_gcp_search_query"), str(tmp_path_factory.mktemp("sq")))
    assert type(store).__name__ == "BulkPostgresStore"
    exp, other = store.create_experiment("sq"), store.create_experiment("sq-other")
    runs = []
    for n in range(14):
        # start times repeat (ties fall to the run id), one run has no name
        run = store.create_run(exp, "u", T0 + (n % 5) * 1000, [RunTag("g", "ab"[n % 2])], None if n == 6 else f"r-{n}")
        rid = run.info.run_id
        runs.append(rid)
        store.log_batch(rid, [Metric("m", float(n % 4) if n != 3 else float("nan"), T0, 0), Metric("x", n / 3, T0 + n, n)],
                        [Param("p", str(n % 3))], [RunTag("t", str(n % 4))])
    store.update_run_info(runs[0], RunStatus.FINISHED, T0 + 9000, None)
    store.update_run_info(runs[1], RunStatus.FAILED, T0 + 8000, "renamed")
    store.delete_run(runs[2])
    store.delete_run(runs[9])
    dataset = Dataset(name="train", digest="d1", source_type="local", source="/d.csv")
    for rid in (runs[4], runs[5]):
        store.log_inputs(rid, [DatasetInput(dataset, [InputTag("mlflow.data.context", "training")]),
                               DatasetInput(Dataset(name="train", digest="d2", source_type="local", source="/e.csv"))])
    model = store.create_logged_model(exp, name="m")
    store.log_outputs(runs[7], [LoggedModelOutput(model.model_id, step=1)])
    store.create_run(other, "u", T0, [], "elsewhere")
    yield store, exp, other
    store.engine.dispose()


CASES = [
    dict(),
    dict(filter_string="metrics.m >= 1", order_by=["metrics.m DESC"]),
    dict(filter_string="params.p = '1'", order_by=["start_time ASC"]),
    dict(filter_string="tags.g = 'a' and attributes.status != 'RUNNING'"),
    dict(order_by=["metrics.m ASC", "start_time DESC"]),
    dict(order_by=["tags.t DESC", "params.p ASC"]),
    dict(order_by=["attributes.run_name ASC"]),
    dict(filter_string="datasets.name = 'train'"),
    dict(filter_string="attributes.run_name LIKE 'r-1%'"),
    dict(run_view_type="DELETED_ONLY"),
    dict(run_view_type="ALL", order_by=["metrics.x DESC"]),
    dict(filter_string="params.p = 'none'"),
]


def _both(store, exp_ids, case, max_results, page_token=None):
    from mlflow.entities import ViewType
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    args = (exp_ids, case.get("filter_string", ""), getattr(ViewType, case.get("run_view_type", "ACTIVE_ONLY")),
            max_results, case.get("order_by", []), page_token)
    mlflows, ours = _outcome(lambda: SqlAlchemyStore._search_runs(store, *args)), _outcome(lambda: store._search_runs(*args))
    # again: the statement built for this request the first time (search_query's per-store cache)
    assert _outcome(lambda: store._search_runs(*args)) == ours
    key = search_query.request_key(*args)
    if key is not None and mlflows[0] != "error":
        assert key in store._search_statements
    return [mlflows, ours]


def _outcome(call):
    from mlflow.exceptions import MlflowException

    try:
        runs, token = call()
    except MlflowException as err:
        return ("error", err.error_code, err.message)
    # as JSON text with keys sorted: NaN equals NaN, and each run's data in one order
    return [json.dumps(r.to_dictionary(), sort_keys=True) for r in runs], token


@pytest.mark.parametrize("case", CASES, ids=[str(n) for n in range(len(CASES))])
def test_whole_and_paged_searches_are_mlflows(seeded, case):
    store, exp, other = seeded
    mlflows, ours = _both(store, [exp, other], case, 100)
    assert ours == mlflows
    token, pages = None, 0
    while True:  # walked in pages of 4 with the tokens each gives
        mlflows, ours = _both(store, [exp], case, 4, token)
        assert ours == mlflows, pages
        # as text, as MLflow's REST handler passes a token (the store gives bytes)
        token, pages = mlflows[1] and mlflows[1].decode(), pages + 1
        if not token:
            break
    assert pages >= 1


def test_found_runs_carry_mlflows_values(seeded):
    store, exp, _ = seeded
    mlflows, ours = _both(store, [exp], dict(run_view_type="ALL"), None)
    assert ours == mlflows and len(ours[0]) == 14
    found = [json.loads(r) for r in ours[0]]
    infos = {r["info"]["run_name"]: r for r in found}
    assert infos["renamed"]["info"]["status"] == "FAILED" and infos["renamed"]["info"]["end_time"] == T0 + 8000
    assert sum(r["info"]["lifecycle_stage"] == "deleted" for r in found) == 2
    assert sum(bool(r["inputs"]["dataset_inputs"]) for r in found) == 2
    assert sum(bool(r["outputs"]["model_outputs"]) for r in found) == 1


@pytest.mark.parametrize("max_results, page_token, filter_string", [
    (1, None, ""), (13, None, ""), (12, None, ""), (50000, None, ""), (0, None, ""), (-1, None, ""),
    (50001, None, ""), (5, "not-a-token", ""), (5, None, "metrics.m <<< 1"), (5, None, "nope.x = 1"),
])
def test_edges_and_refusals_are_mlflows(seeded, max_results, page_token, filter_string):
    from mlflow.entities import ViewType

    store, exp, _ = seeded
    mlflows, ours = _both(store, [exp], dict(filter_string=filter_string), max_results, page_token)
    assert ours == mlflows
    key = search_query.request_key([exp], filter_string, ViewType.ACTIVE_ONLY, max_results, [], page_token)
    assert (key in store._search_statements) == (mlflows[0] != "error")  # a refusal is never kept


def test_requests_of_other_types_are_not_kept():
    key = search_query.request_key
    assert key(["1"], "", 1, 100, ["m DESC"], None) == (("1",), "", 1, 100, ("m DESC",), None)
    assert key(["1"], "", 1, 100, None, "tok") == (("1",), "", 1, 100, None, "tok")
    # 1, 1.0 and True are one dict key, and MLflow answers them differently
    for args in ((["1"], "", 1, 1.0, [], None), (["1"], "", 1, True, [], None), ([1], "", 1, 5, [], None),
                 (["1"], None, 1, 5, [], None), (["1"], "", True, 5, [], None), (None, "", 1, 5, [], None),
                 (["1"], "", 1, 5, [b"m"], None), (["1"], "", 1, 5, [], b"tok")):
        assert key(*args) is None, args



def test_a_store_that_filters_experiments_itself_has_its_statement_built_each_time(seeded):
    """MLflow's workspace store overrides _filter_experiment_ids and reads the database there:
    the ids it gives (and so the statement) may change between two identical requests."""
    from mlflow.entities import ViewType

    store, exp, other = seeded
    visible = [exp]

    class Filtering(type(store)):
        def _filter_experiment_ids(self, session, experiment_ids, lifecycle_stage=None):
            return [e for e in experiment_ids if str(e) in visible]

    filtering = object.__new__(Filtering)  # the seeded store's engine and sessions, nothing kept
    filtering.__dict__.update({k: v for k, v in vars(store).items() if k != "_search_statements"})
    args = ([exp, other], "", ViewType.ALL, 100, [], None)
    store._search_runs(*args)  # kept for the plain store
    assert search_query.request_key(*args) in store._search_statements
    first = {r.info.experiment_id for r in filtering._search_runs(*args)[0]}
    visible[:] = [other]
    second = {r.info.experiment_id for r in filtering._search_runs(*args)[0]}
    assert (first, second) == ({exp}, {other})
    assert not vars(filtering).get("_search_statements")


def test_the_search_front_answers_plain_posts_from_the_store_and_leaves_the_rest(seeded, monkeypatch):
    """server/search.py's Front (before the WSGI bridge): a plain POST answered with the store's
    JSON; any other body, a refused request and other methods reach MLflow's app, body intact."""
    import asyncio

    from mlflow.entities import ViewType
    from mlflow.server import handlers

    from mlflow_gcp.server import search

    store, exp, other = seeded
    monkeypatch.setattr(handlers, "_get_tracking_store", lambda *args, **kwargs: store)
    path = "/api/2.0/mlflow/runs/search"
    reached = []

    async def mlflows_app(scope, receive, send):
        reached.append((scope["method"], (await receive())["body"]))

    front = search.Front(mlflows_app, frozenset({path}))

    def call(body: dict, method="POST"):
        sent, raw = [], json.dumps(body).encode()

        async def receive():
            return {"type": "http.request", "body": raw, "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": method, "path": path, "headers": [(b"content-type", b"application/json")]}
        reached.clear()
        asyncio.run(front(scope, receive, send))
        return sent, reached[:], raw

    plain = {"experiment_ids": [exp, other], "filter": "metrics.m >= 1", "run_view_type": "ALL", "max_results": 5,
             "order_by": ["metrics.m DESC"]}
    sent, passed, _ = call(plain)
    want = store.search_runs_answer([exp, other], "metrics.m >= 1", ViewType.ALL, 5, ["metrics.m DESC"], None)
    assert not passed and json.loads(want)["runs"] and json.loads(want)["next_page_token"]
    assert sent[0]["status"] == 200 and dict(sent[0]["headers"])[b"content-type"] == b"application/json"
    assert sent[1]["body"] == want.encode()
    for body, method in (({**plain, "max_results": 0}, "POST"), ({**plain, "filter": "metrics.m <<< 1"}, "POST"),
                         ({**plain, "run_view_type": 3}, "POST"), (plain, "GET")):
        sent, passed, raw = call(body, method)
        assert not sent and passed == [(method, raw)], body
