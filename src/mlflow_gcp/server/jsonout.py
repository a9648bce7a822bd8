"""MLflow's `message_to_json`, same output, a few times faster.

Why: every REST answer of MLflow's server goes protobuf -> `MessageToDict` (protobuf's pure-Python
printer, reflection per field) -> a second walk (`_mark_int64_fields`) that turns the int64
strings back into numbers -> a merge of the two -> `json.dumps`. For a 100-run search_runs page
that is ~45% of the request's CPU. Here one walk per message, driven by a plan computed once per
message type, gives the same dict (same keys in the same order, int64 as numbers, NaN and
infinities as MLflow's strings, enums by name, bytes as base64), then the same `json.dumps`.

Messages this walk does not know how to print exactly as protobuf does (maps, well-known types
such as Timestamp or Struct, extensions) go to MLflow's own function; so does any call with
`convert_int64_to_number=False`. A search_runs answer server/search.py already wrote as this
function's compact JSON is passed through as it is. tests/unit/test_jsonout.py compares both on random messages of
every MLflow service type.
"""

from __future__ import annotations

import base64
import json
import math

from google.protobuf.descriptor import FieldDescriptor as F

from mlflow_gcp.server.search import Answer

_INT64 = {F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_SINT64, F.TYPE_FIXED64, F.TYPE_SFIXED64}
_INT32 = {F.TYPE_INT32, F.TYPE_UINT32, F.TYPE_SINT32, F.TYPE_FIXED32, F.TYPE_SFIXED32}


class _Unsupported(Exception):
    pass


def _double(value: float):
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _float32(value: float):
    from google.protobuf.internal import type_checkers

    special = _double(value)
    return special if isinstance(special, str) else type_checkers.ToShortestFloat(value)


def _bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("utf-8")


def _same(value):
    return value


def _enum(enum_type):
    def convert(value):
        known = enum_type.values_by_number.get(value)
        return known.name if known is not None else value

    return convert


_SCALAR = {F.TYPE_DOUBLE: _double, F.TYPE_FLOAT: _float32, F.TYPE_BOOL: _same, F.TYPE_STRING: _same,
           F.TYPE_BYTES: _bytes, **{t: int for t in _INT64}, **{t: _same for t in _INT32}}
_PLANS: dict[str, dict | None] = {}


def _plan(descriptor) -> dict:
    """field number -> (JSON name, converter, repeated) for one message type."""
    name = descriptor.full_name
    if name in _PLANS:
        plan = _PLANS[name]
        if plan is None:
            raise _Unsupported(name)
        return plan
    _PLANS[name] = None  # while building (recursive types) and if unsupported
    if name.startswith("google.protobuf.") or descriptor.GetOptions().map_entry:
        raise _Unsupported(name)
    plan = {}
    for field in descriptor.fields:
        if field.type == F.TYPE_MESSAGE:
            sub = field.message_type
            if sub.full_name.startswith("google.protobuf.") or sub.GetOptions().map_entry:
                raise _Unsupported(sub.full_name)
            convert = _message_converter(sub)
        elif field.type == F.TYPE_ENUM:
            convert = _enum(field.enum_type)
        elif field.type in _SCALAR:
            convert = _SCALAR[field.type]
        else:
            raise _Unsupported(f"{name}.{field.name}")
        repeated = getattr(field, "is_repeated", None)
        if repeated is None:
            repeated = field.label == F.LABEL_REPEATED
        plan[field.number] = (field.name, convert, repeated)
    _PLANS[name] = plan
    return plan


def _message_converter(descriptor):
    def convert(message):
        return _to_dict(message, _plan(descriptor))

    return convert


def _to_dict(message, plan: dict) -> dict:
    out = {}
    for field, value in message.ListFields():
        entry = plan.get(field.number)
        if entry is None or field.is_extension:
            raise _Unsupported(field.full_name)
        name, convert, repeated = entry
        out[name] = [convert(v) for v in value] if repeated else convert(value)
    return out


def message_to_dict(message) -> dict | None:
    """The dict MLflow's message_to_json serialises, or None when this walk cannot be exact."""
    try:
        return _to_dict(message, _plan(message.DESCRIPTOR))
    except _Unsupported:
        return None


def fast_message_to_json(original):
    """A drop-in for MLflow's `message_to_json` that falls back to `original`."""

    def message_to_json(message, *, pretty: bool = True, convert_int64_to_number: bool = True):
        if type(message) is Answer:  # written by server/search.py in this very layout
            return message.text
        as_dict = message_to_dict(message) if convert_int64_to_number else None
        if as_dict is None:
            return original(message, pretty=pretty, convert_int64_to_number=convert_int64_to_number)
        if pretty:
            return json.dumps(as_dict, indent=2)
        return json.dumps(as_dict, separators=(",", ":"))

    message_to_json.original = original
    return message_to_json
