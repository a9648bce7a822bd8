"""OpenTelemetry AnyValue and attribute lists built from Python values, as OTLP exporters send them
(tests of the OTLP ingest)."""

from __future__ import annotations


def set_value(any_value, v):
    if v is None:
        return
    if isinstance(v, bool):
        any_value.bool_value = v
    elif isinstance(v, int):
        any_value.int_value = v
    elif isinstance(v, float):
        any_value.double_value = v
    elif isinstance(v, bytes):
        any_value.bytes_value = v
    elif isinstance(v, str):
        any_value.string_value = v
    elif isinstance(v, list):
        any_value.array_value.SetInParent()
        for item in v:
            set_value(any_value.array_value.values.add(), item)
    elif isinstance(v, dict):
        any_value.kvlist_value.SetInParent()
        for key, item in v.items():
            kv = any_value.kvlist_value.values.add(key=key)
            set_value(kv.value, item)


def add_attributes(repeated, attributes: list[tuple[str, object]]):
    for key, v in attributes:
        set_value(repeated.add(key=key).value, v)
