"""Field-level diff and IAM policy merging (pure)."""

from __future__ import annotations

from mlflow_gcp.gcp import iampolicy
from mlflow_gcp.plan.diff import diff


def paths(changes):
    return [c.path for c in changes]


def test_only_desired_fields_are_compared_and_google_defaults_do_not_count():
    want = {"settings": {"tier": "db-f1-micro", "deletionProtectionEnabled": False, "userLabels": {"a": "1"}}}
    have = {"etag": "x", "settings": {"tier": "db-f1-micro", "kind": "sql#settings", "userLabels": {"a": "1", "theirs": "2"}}}
    assert diff(want, have) == []


def test_numbers_compare_across_string_and_int():
    assert diff({"dataDiskSizeGb": "10", "hour": 4}, {"dataDiskSizeGb": 10, "hour": "4"}) == []
    assert paths(diff({"hour": 4}, {"hour": 5})) == ["hour"]


def test_a_changed_field_is_reported_with_old_and_new_and_its_setting():
    changes = diff({"template": {"scaling": {"maxInstanceCount": 4}}},
                   {"template": {"scaling": {"maxInstanceCount": 10, "minInstanceCount": 0}}},
                   labels={"template.scaling.maxInstanceCount": "service.max_instances"})
    assert [str(c) for c in changes] == ["template.scaling.maxInstanceCount (service.max_instances): 10 -> 4"]


def test_named_lists_match_by_name_so_order_does_not_matter():
    want = {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}
    assert diff(want, {"env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]}) == []
    assert paths(diff(want, {"env": [{"name": "A", "value": "9"}, {"name": "B", "value": "2"}]})) == ["env[A].value"]
    assert paths(diff(want, {"env": [{"name": "A", "value": "1"}]})) == ["env[B]"]
    extra = diff(want, {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}, {"name": "C", "value": "3"}]})
    assert [(c.path, c.new) for c in extra] == [("env[C]", None)]


def test_unnamed_lists_compare_by_position_and_length():
    rule = {"action": {"type": "Delete"}, "condition": {"age": 30}}
    assert diff({"rule": [rule]}, {"rule": [rule]}) == []
    assert paths(diff({"rule": [rule]}, {"rule": []})) == ["rule"]
    assert paths(diff({"rule": [rule]}, {"rule": [{"action": {"type": "Delete"}, "condition": {"age": 31}}]})) == ["rule[0].condition.age"]


def test_missing_resource_fields_show_as_none():
    [change] = diff({"iamConfiguration": {"publicAccessPrevention": "enforced"}}, {})
    assert str(change) == "iamConfiguration.publicAccessPrevention: (none) -> enforced"


def test_iam_merge_adds_missing_members_once_and_keeps_others():
    policy = {"etag": "e1", "bindings": [{"role": "roles/run.invoker", "members": ["user:a@x.com"]},
                                         {"role": "roles/viewer", "members": ["user:b@x.com"]}]}
    wanted = [("roles/run.invoker", "user:a@x.com"), ("roles/run.invoker", "user:c@x.com"), ("roles/cloudsql.client", "sa")]
    assert iampolicy.missing(policy, wanted) == wanted[1:]
    merged = iampolicy.merged(policy, iampolicy.missing(policy, wanted), [("roles/viewer", "user:b@x.com")])
    assert merged["etag"] == "e1", "the write carries the etag read"
    roles = {b["role"]: b["members"] for b in merged["bindings"]}
    assert roles == {"roles/run.invoker": ["user:a@x.com", "user:c@x.com"], "roles/cloudsql.client": ["sa"]}
    assert policy["bindings"][0]["members"] == ["user:a@x.com"], "input untouched"


def test_iam_ensure_writes_nothing_when_nothing_is_missing_and_retries_on_a_stale_etag():
    from mlflow_gcp.gcp.errors import Aborted

    store = {"policy": {"etag": "1", "bindings": [{"role": "r", "members": ["m"]}]}}
    writes = []

    def set_(p):
        writes.append(p)
        if len(writes) == 1:
            raise Aborted("concurrent change")
        store["policy"] = p
        return p

    assert iampolicy.ensure(lambda: store["policy"], set_, [("r", "m")]) == []
    assert writes == []
    assert iampolicy.ensure(lambda: store["policy"], set_, [("r", "n")]) == [("add", ("r", "n"))]
    assert len(writes) == 2 and "n" in store["policy"]["bindings"][0]["members"]
