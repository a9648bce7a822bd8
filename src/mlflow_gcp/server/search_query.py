"""MLflow's SqlAlchemyStore._search_runs, with the page's runs read from its statement's rows
instead of as ORM objects.

Why: MLflow runs its statement through the ORM session, which builds a SqlRun per row (identity
map, instance state, loader events for metrics, params and tags), then turns each into a Run
entity. For a 100-run page that was ~15% of our worker's CPU per search_runs answer (py-spy).
Here the same statement, built by MLflow's own helpers in MLflow's order (its checks and errors
come first, as they did), runs on the session's connection as a Core statement: the same SQL
in the same transaction, plain rows, and a RunInfo per row with the values and types
SqlRun.to_mlflow_entity gives. The runs' metrics, params and tags are not read here (the store's
bulk queries fill them, server/store.py), and a run's name from its tags is set there too.

The statement MLflow builds depends on the request alone (its helpers build subqueries from the
session without running them), so each store keeps it per request (`request_key`: experiments,
filter, view type, max_results, order, page token, each of the type MLflow's REST handler gives):
a repeated request, such as a page a client polls, skips MLflow's filter parse and statement
build. A request MLflow refuses raises as before and is never kept. That holds only while the
store's `_filter_experiment_ids` is SqlAlchemyStore's own (it returns the ids it is given): a
store that overrides it (MLflow's workspace store reads the database there) has its statement
built for every request.

Only for the _search_runs this copy follows: `reader()` compares the source of MLflow's method
with the one copied and gives None for any other MLflow, whose own method then runs.
"""

from __future__ import annotations

from mlflow_gcp.server import copied


# sha256 of MLflow 3.17.2's SqlAlchemyStore._search_runs source, the one `_search_runs` follows.
COPIED_SOURCE = "5235efb440f86762c07045c1207c96c1ce172937d4299d8ad24036aab405a7b7"
MAX_STATEMENTS = 256  # request shapes kept per store (all dropped when full)
_NAMES = ("LifecycleStage", "Run", "RunInputs", "RunOutputs", "SearchUtils", "SqlAlchemyStore", "SqlRun", "select",
          "_get_orderby_clauses", "_get_sqlalchemy_filter_clauses", "_parse_experiment_ids")


def reader(store_class):
    """`search(store, experiment_ids, filter_string, run_view_type, max_results, order_by,
    page_token) -> (runs, next_page_token)` as MLflow's `store_class._search_runs` answers,
    each run with its info, inputs and outputs and no data; None when MLflow's method is not
    the one copied here."""
    if copied.digest(getattr(store_class, "_search_runs", None)) != COPIED_SOURCE:
        return None
    from mlflow.entities import RunInfo
    from mlflow.store.tracking import sqlalchemy_store

    found = vars(sqlalchemy_store)
    if not all(name in found for name in _NAMES):
        return None
    return _search_runs(RunInfo, *(found[name] for name in _NAMES))


def _search_runs(RunInfo, LifecycleStage, Run, RunInputs, RunOutputs, SearchUtils, SqlAlchemyStore,  # noqa: N803
                 SqlRun, select, _get_orderby_clauses, _get_sqlalchemy_filter_clauses, _parse_experiment_ids):
    pure_filter = SqlAlchemyStore._filter_experiment_ids  # answers from its arguments alone
    columns = ("run_uuid", "name", "experiment_id", "user_id", "status", "start_time", "end_time",
               "lifecycle_stage", "artifact_uri")

    def statement(self, session, stages, experiment_ids, filter_string, max_results, order_by, page_token):
        # MLflow's code, line for line, from its session up to its statement's execution.
        parsed_filters = SearchUtils.parse_search_filter(filter_string)
        cases_orderby, parsed_orderby, sorting_joins = _get_orderby_clauses(order_by, session)

        stmt = select(SqlRun, *cases_orderby)
        (
            attribute_filters,
            non_attribute_filters,
            dataset_filters,
        ) = _get_sqlalchemy_filter_clauses(parsed_filters, session, self._get_dialect())
        for non_attr_filter in non_attribute_filters:
            stmt = stmt.join(non_attr_filter)
        for dataset_filter in dataset_filters:
            stmt = stmt.join(
                dataset_filter,
                SqlRun.run_uuid == dataset_filter.c.destination_id,
            )
        for j in sorting_joins:
            stmt = stmt.outerjoin(j)

        offset = SearchUtils.parse_start_offset_from_page_token(page_token)
        experiment_ids = _parse_experiment_ids(experiment_ids)
        experiment_ids = self._filter_experiment_ids(session, experiment_ids)
        # MLflow adds its loader options here: they only shape ORM objects, and there are none.
        stmt = (
            stmt
            .distinct()
            .filter(
                SqlRun.experiment_id.in_(experiment_ids),
                SqlRun.lifecycle_stage.in_(stages),
                *attribute_filters,
            )
            .order_by(*parsed_orderby)
            .offset(offset)
        )
        if max_results is not None:
            stmt = stmt.limit(max_results + 1)
        return stmt, offset

    def search(self, experiment_ids, filter_string, run_view_type, max_results, order_by, page_token):
        # MLflow's statement for this request, built the first time (the module's docstring).
        key = None
        if type(self)._filter_experiment_ids is pure_filter:  # else the statement may differ per call
            key = request_key(experiment_ids, filter_string, run_view_type, max_results, order_by, page_token)
        built = self.__dict__.setdefault("_search_statements", {})
        found = built.get(key) if key is not None else None
        if found is None:
            # MLflow's code, line for line.
            self._validate_max_results_param(max_results, allow_null=True)

            stages = set(LifecycleStage.view_type_to_stages(run_view_type))

        with self.ManagedSessionMaker() as session:
            if found is None:
                found = statement(self, session, stages, experiment_ids, filter_string, max_results, order_by,
                                  page_token)
                if key is not None:
                    if len(built) >= MAX_STATEMENTS:
                        built.clear()
                    built[key] = found
            stmt, offset = found
            # The run's own columns come first in the row (select(SqlRun, ...)); the order-by
            # columns after them may reuse a name, so each is looked up at its first place.
            result = session.connection().execute(stmt)
            keys = list(result.keys())
            run_id, name, experiment_id, user_id, status, start, end, stage, uri = (keys.index(c) for c in columns)
            runs = [  # SqlRun.to_mlflow_entity's RunInfo
                RunInfo(run_id=row[run_id], run_name=row[name], experiment_id=str(row[experiment_id]),
                        user_id=row[user_id], status=row[status], start_time=row[start], end_time=row[end],
                        lifecycle_stage=row[stage], artifact_uri=row[uri])
                for row in result.fetchall()
            ]
            run_ids = [info.run_id for info in runs]

            # MLflow's code again from here: inputs, outputs, the page token.
            inputs = self._get_run_inputs(run_uuids=run_ids, session=session)
            model_outputs_map = self._get_model_outputs_bulk(run_ids=run_ids, session=session)
            runs_with_inputs_outputs = [
                Run(info, None, RunInputs(dataset_inputs=inputs[i]), RunOutputs(model_outputs_map[info.run_id]))
                for i, info in enumerate(runs)
            ]

            next_page_token = None
            if max_results is not None and len(runs_with_inputs_outputs) == max_results + 1:
                next_page_token = SearchUtils.create_page_token(offset + max_results)
                runs_with_inputs_outputs = runs_with_inputs_outputs[:max_results]

        return runs_with_inputs_outputs, next_page_token

    return search


def request_key(experiment_ids, filter_string, run_view_type, max_results, order_by, page_token):
    """The search request as a key, or None unless every part has the type MLflow's REST handler
    gives it (1, 1.0 and True would be one key, yet MLflow's answers to them differ)."""
    try:
        ids, order = tuple(experiment_ids), None if order_by is None else tuple(order_by)
    except TypeError:
        return None
    if not (all(type(x) is str for x in ids + (order or ())) and type(filter_string) is str
            and type(run_view_type) is int and (max_results is None or type(max_results) is int)
            and (page_token is None or type(page_token) is str)):
        return None
    return ids, filter_string, run_view_type, max_results, order, page_token
