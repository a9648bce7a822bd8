"""The column arrays of the bulk store's prepared metric write (server/store.py): the shortcuts for
the usual batch give the very text the general rendering gives. What PostgreSQL stores from them
is compared with MLflow's store in tests/integration/test_store_faults.py."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mlflow_gcp.server import store

_KEYS = st.text(alphabet=st.sampled_from('ab"\\{},. \u00e9'), min_size=1, max_size=6)
_INTS = st.integers(-2**63, 2**63 - 1)


def _general_text(keys) -> str:
    return "{" + ",".join(['"' + k.replace("\\", "\\\\").replace('"', '\\"') + '"' for k in keys]) + "}"


@given(st.lists(_KEYS, min_size=1, max_size=8))
def test_key_array_is_the_escaped_rendering(keys):
    assert store._text_array(tuple(keys)) == _general_text(keys)


@given(st.lists(_INTS, min_size=1, max_size=8) | st.tuples(_INTS, st.integers(1, 8)).map(lambda t: [t[0]] * t[1]))
def test_int_array_is_the_plain_rendering(ints):
    assert store._int_array(tuple(ints)) == "{" + ",".join(map(str, ints)) + "}"


_ROW = st.tuples(st.sampled_from(["m0", "m1", "a b:c/\u00e9"]),
                 st.floats(allow_nan=False, allow_infinity=False) | st.just(0), _INTS, _INTS, st.booleans())


@given(st.lists(_ROW, min_size=1, max_size=20))
def test_typed_rows_get_the_same_params_without_the_type_checks(rows):
    # Rows as log_metric_fields builds them: a float value, or 0 for NaN.
    rows = [(k, 0 if nan else float(v), t, s, nan, "r" * 32) for k, v, t, s, nan in rows]
    want = store.metric_write_params("r" * 32, rows)
    assert want is not None
    assert store.metric_write_params("r" * 32, rows, typed=True) == want


def test_untyped_rows_are_still_refused_without_typed():
    rows = [("m", 1, 0, 0, False, "r" * 32)]  # an int value: MLflow's insert renders it
    assert store.metric_write_params("r" * 32, rows) is None
