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


# Trace answers (BatchGetTraces, GetTrace, SearchTracesV3) carry maps, Timestamp, Duration,
# google.protobuf.Value and OpenTelemetry spans: they are filled here too, with edge values.
TIMESTAMP_SECONDS = [0, 1, -1, -62135596800, 253402300799, 1_700_000_000]
NANOS = [0, 1, 1000, 1_000_000, 123_456_789, 999_999_999, 500_000_000]


def fill_well_known(message, rng):
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        message.seconds, message.nanos = rng.choice(TIMESTAMP_SECONDS), rng.choice(NANOS)
    elif name == "google.protobuf.Duration":
        seconds, nanos = rng.choice([0, 1, 59, 3600, 315_576_000_000]), rng.choice(NANOS)
        sign = rng.choice([1, -1])
        message.seconds, message.nanos = sign * seconds, sign * nanos
    elif name == "google.protobuf.Value":
        kind = rng.choice(["null", "number", "string", "bool", "struct", "list", "unset", "nan"])
        if kind == "null":
            message.null_value = 0
        elif kind == "number":
            message.number_value = rng.choice([0.0, -0.0, 1.5, 1e300, 2.0**53 + 1, -7.0])
        elif kind == "nan":
            message.number_value = float("nan")
        elif kind == "string":
            message.string_value = rng.choice(STRINGS)
        elif kind == "bool":
            message.bool_value = rng.random() < 0.5
        elif kind == "struct":
            message.struct_value.update({rng.choice(["a", "fields", "é"]): rng.choice([1, "x", None, [1]])})
        elif kind == "list":
            message.list_value.extend(rng.choice([[], [1, "list_value"], [{"a": 2}]]))
    elif name == "google.protobuf.Struct":
        message.update({rng.choice(["a", "fields"]): rng.choice([1.5, "x", {"b": [2]}])})
    elif name == "google.protobuf.FieldMask":
        message.paths.extend(rng.sample(["a", "b_c", "d.e"], rng.randrange(3)))
    elif message.DESCRIPTOR.file.name == "google/protobuf/wrappers.proto":
        field = message.DESCRIPTOR.fields_by_name["value"]
        message.value = scalar(field, rng)
    elif name == "google.protobuf.Any":
        pass
    else:
        return False
    return True


def fill_all(message, rng, depth=0):
    """Like fill, with maps of every kind, well-known types and deeper nesting."""
    if message.DESCRIPTOR.full_name.startswith("google.protobuf.") and fill_well_known(message, rng):
        return message
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        target = getattr(message, field.name) if field.type == F.TYPE_MESSAGE or field.is_repeated else None
        if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            for _ in range(rng.randrange(4)):
                key = scalar(key_field, rng)
                if value_field.type == F.TYPE_MESSAGE:
                    if depth < 4:
                        fill_all(target[key], rng, depth + 1)
                else:
                    target[key] = scalar(value_field, rng)
        elif field.type == F.TYPE_MESSAGE:
            if depth > 4:
                continue
            if field.is_repeated:
                for _ in range(rng.randrange(3)):
                    fill_all(target.add(), rng, depth + 1)
            else:
                target.SetInParent()
                fill_all(target, rng, depth + 1)
        elif field.is_repeated:
            target.extend(scalar(field, rng) for _ in range(rng.randrange(3)))
        else:
            setattr(message, field.name, scalar(field, rng))
    return message


def same_as_mlflow(message, numbers=True):
    from mlflow.utils.proto_json_utils import message_to_json

    fast = jsonout.fast_message_to_json(message_to_json)
    try:
        expected = message_to_json(message, pretty=False, convert_int64_to_number=numbers)
    except Exception as error:  # protobuf refuses some values (NaN in a Value): so must we
        with pytest.raises(type(error)):
            fast(message, pretty=False, convert_int64_to_number=numbers)
        return None
    assert fast(message, pretty=False, convert_int64_to_number=numbers) == expected
    return jsonout.message_to_dict(message, numbers) is not None


def trace_answer_classes():
    from mlflow.protos import service_pb2

    return [service_pb2.BatchGetTraces.Response, service_pb2.GetTrace.Response,
            service_pb2.SearchTracesV3.Response, service_pb2.BatchGetTraceInfos.Response,
            service_pb2.GetTraceInfoV3.Response, service_pb2.StartTraceV3.Response]


@pytest.mark.parametrize("numbers", [True, False])
def test_trace_answers_with_every_field_filled_print_as_mlflows(numbers):
    rng = random.Random(17)
    walked = tried = 0
    for cls in trace_answer_classes():
        for _ in range(150):
            fast = same_as_mlflow(fill_all(cls(), rng), numbers)
            tried += fast is not None
            walked += bool(fast)
    assert walked > tried // 4  # the rest carried a Struct / list Value / bool-keyed map


@pytest.mark.parametrize("numbers", [True, False])
def test_every_type_with_maps_and_well_known_types_prints_as_mlflows(numbers):
    rng = random.Random(3)
    for cls in message_classes():
        for _ in range(4):
            same_as_mlflow(fill_all(cls(), rng), numbers)


def span_trace(**span_fields):
    from mlflow.protos import service_pb2
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    answer = service_pb2.BatchGetTraces.Response()
    trace = answer.traces.add()
    trace.spans.append(Span(**span_fields))
    return answer


@pytest.mark.parametrize("answer_fields", [
    {"start_time_unix_nano": 2**64 - 1, "end_time_unix_nano": 2**53 + 1, "trace_id": b"\x00" * 16,
     "name": "ünï \"q\" \\ \u2028 😀"},
    {"start_time_unix_nano": 0, "flags": 2**32 - 1, "dropped_attributes_count": 7},
])
def test_span_edge_values_print_as_mlflows(answer_fields):
    assert same_as_mlflow(span_trace(**answer_fields)) is True


def test_trace_info_maps_and_times_print_as_mlflows():
    from mlflow.protos import service_pb2

    answer = service_pb2.BatchGetTraces.Response()
    info = answer.traces.add().trace_info
    info.trace_id = "tr-1"
    info.request_time.FromNanoseconds(1_700_000_000_123_000_000)
    info.execution_duration.FromNanoseconds(1_500_000)
    info.tags["é \"k\""] = "v\n"
    info.tags["mlflow.traceName"] = "😀"
    info.trace_metadata["mlflow.trace.sizeStats"] = '{"num_spans": 8}'
    assert same_as_mlflow(answer) is True
    assert same_as_mlflow(answer, numbers=False) is True
    info.ClearField("tags")
    info.ClearField("trace_metadata")
    answer.traces.add()  # a trace with no spans and no info
    assert same_as_mlflow(answer) is True


def test_assessment_scalar_values_take_the_walk_and_structs_fall_back():
    from mlflow.protos import service_pb2

    answer = service_pb2.GetTrace.Response()
    assessment = answer.trace.trace_info.assessments.add()
    assessment.assessment_name = "quality"
    assessment.feedback.value.number_value = 2.0**60
    assessment.create_time.FromSeconds(5)
    assert same_as_mlflow(answer) is True
    assessment.feedback.value.struct_value.update({"fields": {"a": 1}})
    assert same_as_mlflow(answer) is False


def map_message_class():
    """A message with a map of every key kind (MLflow's own protos have string keys only)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

    T = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(name="h_maps.proto", package="h", syntax="proto3",
                                              dependency=["google/protobuf/timestamp.proto"])
    message = file.message_type.add(name="M")
    kinds = [("i32s", T.TYPE_INT32, T.TYPE_STRING, None), ("i64i64", T.TYPE_INT64, T.TYPE_INT64, None),
             ("u64m", T.TYPE_UINT64, T.TYPE_MESSAGE, ".h.M"), ("bi64", T.TYPE_BOOL, T.TYPE_INT64, None),
             ("bs", T.TYPE_BOOL, T.TYPE_STRING, None), ("sf64", T.TYPE_STRING, T.TYPE_FIXED64, None),
             ("s32t", T.TYPE_SINT32, T.TYPE_MESSAGE, ".google.protobuf.Timestamp"),
             ("sd", T.TYPE_STRING, T.TYPE_DOUBLE, None), ("sm", T.TYPE_STRING, T.TYPE_MESSAGE, ".h.M")]
    message.field.add(name="n", number=99, type=T.TYPE_INT64, label=T.LABEL_OPTIONAL)
    for number, (name, key, value, type_name) in enumerate(kinds, 1):
        entry = message.nested_type.add(name=name.capitalize() + "Entry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=key, label=T.LABEL_OPTIONAL)
        entry.field.add(name="value", number=2, type=value, label=T.LABEL_OPTIONAL, type_name=type_name)
        message.field.add(name=name, number=number, type=T.TYPE_MESSAGE, label=T.LABEL_REPEATED,
                          type_name=f".h.M.{entry.name}")
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("h.M"))


@pytest.mark.parametrize("numbers", [True, False])
def test_maps_of_every_key_kind_print_as_mlflows(numbers):
    rng = random.Random(5)
    cls = map_message_class()
    walked = 0
    for _ in range(300):
        walked += bool(same_as_mlflow(fill_all(cls(), rng), numbers))
    assert walked > 10  # most random ones carry a bool-keyed map
    m = cls()
    m.i32s[-3] = "a"
    m.i32s[2] = "b"
    m.i64i64[2**62] = -(2**63)
    m.u64m[2**64 - 1].n = 2**60
    m.sf64["é"] = 2**64 - 1
    m.s32t[-1].FromSeconds(7)
    m.sd["x"] = float("nan")
    m.sm[""].i32s[0] = ""
    assert same_as_mlflow(m, numbers) is True
    m.bi64[True] = 5  # MLflow's pass leaves these values as protobuf's strings: MLflow's function
    assert same_as_mlflow(m, numbers) is False
