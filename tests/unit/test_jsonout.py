"""server/jsonout.py prints exactly what MLflow's message_to_json prints, on random messages of
every type of MLflow's tracking, registry, artifacts and webhook services."""

from __future__ import annotations

import random

import pytest
from google.protobuf.descriptor import FieldDescriptor as F

from mlflow_gcp.server import jsonout

SPECIAL_DOUBLES = [0.0, -0.0, 1.5, float("nan"), float("inf"), float("-inf"), 1.7976931348623157e308, 5e-324, 1e-7]
STRINGS = ["", "a", "é\u2028\"\\\n\t", "x" * 50, "0" * 32, "😀", "</script>"]
INT_RANGES = {
    F.TYPE_INT64: (-(2**63), 2**63 - 1), F.TYPE_SINT64: (-(2**63), 2**63 - 1), F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
    F.TYPE_INT32: (-(2**31), 2**31 - 1), F.TYPE_SINT32: (-(2**31), 2**31 - 1), F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1),
}


def message_classes():
    from mlflow.protos import mlflow_artifacts_pb2, model_registry_pb2, service_pb2, webhooks_pb2

    found = {}

    def visit(cls):
        found[cls.DESCRIPTOR.full_name] = cls
        for nested in cls.DESCRIPTOR.nested_types:
            if not nested.GetOptions().map_entry:
                visit(getattr(cls, nested.name))

    for module in (service_pb2, model_registry_pb2, mlflow_artifacts_pb2, webhooks_pb2):
        for name in module.DESCRIPTOR.message_types_by_name:
            visit(getattr(module, name))
    return [found[k] for k in sorted(found)]


def scalar(field, rng):
    if field.type == F.TYPE_DOUBLE:
        return rng.choice(SPECIAL_DOUBLES + [rng.uniform(-1e6, 1e6)])
    if field.type == F.TYPE_FLOAT:
        return rng.choice([0.1, -3.25, float("nan"), float("inf"), 1e30, rng.uniform(-10, 10)])
    if field.type == F.TYPE_BOOL:
        return rng.random() < 0.5
    if field.type == F.TYPE_STRING:
        return rng.choice(STRINGS)
    if field.type == F.TYPE_BYTES:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(6)))
    if field.type == F.TYPE_ENUM:
        return rng.choice(field.enum_type.values).number
    lo, hi = INT_RANGES[field.type]
    return rng.choice([lo, hi, 0, 1, rng.randint(lo, hi)])


def fill(message, rng, depth=0):
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.35:
            continue
        repeated = field.is_repeated
        if field.type == F.TYPE_MESSAGE:
            sub = field.message_type
            if sub.GetOptions().map_entry:
                target = getattr(message, field.name)
                key_field, value_field = sub.fields_by_name["key"], sub.fields_by_name["value"]
                if value_field.type != F.TYPE_MESSAGE:
                    target[scalar(key_field, rng)] = scalar(value_field, rng)
                continue
            if sub.full_name.startswith("google.protobuf.") or depth > 3:
                continue
            if repeated:
                for _ in range(rng.randrange(3)):
                    fill(getattr(message, field.name).add(), rng, depth + 1)
            else:
                child = getattr(message, field.name)
                child.SetInParent()
                fill(child, rng, depth + 1)
        elif repeated:
            getattr(message, field.name).extend(scalar(field, rng) for _ in range(rng.randrange(3)))
        else:
            setattr(message, field.name, scalar(field, rng))
    return message


def test_same_text_as_mlflow_on_random_messages_of_every_type():
    from mlflow.utils.proto_json_utils import message_to_json

    fast = jsonout.fast_message_to_json(message_to_json)
    rng = random.Random(7)
    walked = 0
    classes = message_classes()
    assert len(classes) > 200
    for cls in classes:
        for _ in range(12):
            message = fill(cls(), rng)
            for pretty in (True, False):
                assert fast(message, pretty=pretty) == message_to_json(message, pretty=pretty), cls.DESCRIPTOR.full_name
            walked += jsonout.message_to_dict(message) is not None
    assert walked > len(classes) * 6  # most types take the fast walk, the rest fall back


@pytest.mark.parametrize("name", ["SearchRuns", "GetRun", "GetMetricHistory", "SearchExperiments", "CreateRun"])
def test_the_busy_answers_take_the_fast_walk(name):
    from mlflow.protos import service_pb2

    response = fill(getattr(service_pb2, name).Response(), random.Random(1))
    assert jsonout.message_to_dict(response) is not None


def test_int64_as_numbers_off_is_mlflows_own():
    from mlflow.protos.service_pb2 import Metric
    from mlflow.utils.proto_json_utils import message_to_json

    fast = jsonout.fast_message_to_json(message_to_json)
    m = Metric(key="k", value=1.0, timestamp=2**40, step=3)
    assert fast(m, convert_int64_to_number=False) == message_to_json(m, convert_int64_to_number=False)
    assert '"timestamp": "1099511627776"' in fast(m, convert_int64_to_number=False)
