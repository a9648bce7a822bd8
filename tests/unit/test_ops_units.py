"""Pure parts of the ops commands: timetables, log filters and lines, versions, rules, budget tiers,
writing settings back to the config file."""

from __future__ import annotations

import datetime as dt

import pytest

from mlflow_gcp import config
from mlflow_gcp.errors import BudgetError, ConfigError, MlflowGcpError
from mlflow_gcp.ops import live, logs, scale, schedule, status, upgrade


@pytest.mark.parametrize("text,cron,label", [
    ("fri 20:00", "0 20 * * 5", "fri 20:00"),
    ("MON-FRI 7:30", "30 7 * * 1,2,3,4,5", "mon,tue,wed,thu,fri 07:30"),
    ("sat,sun 08:00", "0 8 * * 6,0", "sat,sun 08:00"),
    ("fri-mon 01:00", "0 1 * * 1,5,6,0", "mon,fri,sat,sun 01:00"),
    ("22:15", "15 22 * * *", "daily 22:15"),
    ("daily 06:00", "0 6 * * *", "daily 06:00"),
])
def test_timetable_to_cron_and_back(text, cron, label):
    when = schedule.parse_when(text, "pause")
    assert when.cron == cron and str(when) == label
    assert schedule._parse_cron(cron) == when


@pytest.mark.parametrize("text", ["friday", "fri 24:00", "fri 20:61", "xyz 10:00", "mon-tue-wed 10:00", ""])
def test_bad_timetables_name_the_option(text):
    with pytest.raises(ConfigError) as err:
        schedule.parse_when(text, "resume")
    assert str(err.value).startswith("resume: ")


@pytest.mark.parametrize("pause_at,resume_at,hours", [
    ("fri 20:00", "mon 07:00", 59),
    ("mon-fri 20:00", "mon-fri 07:00", 103),  # 4 weeknights of 11 h + the weekend
    ("daily 22:00", "daily 06:00", 56),
    ("mon 07:00", "fri 20:00", 168 - 59),  # the other way round: paused during the week
    ("sat 00:00", "sat 00:00", 0),
])
def test_paused_hours_per_week(pause_at, resume_at, hours):
    assert schedule.paused_hours_per_week(schedule.parse_when(pause_at, "p"), schedule.parse_when(resume_at, "r")) == hours


def test_saving_is_the_instance_price_of_the_paused_hours():
    cfg = config.from_dict({"project": "acme-ml-prod", "database": {"tier": "db-g1-small"}})
    # 59 h a week x 730/168 weeks a month x $0.035 an hour
    assert schedule.monthly_saving(cfg, 59) == round(59 * 730 / 168 * 0.035, 2)


def test_time_zones_are_checked():
    assert schedule.check_time_zone("Europe/Paris") == "Europe/Paris"
    with pytest.raises(ConfigError):
        schedule.check_time_zone("Europe/Atlantis")


def _cfg(**service):
    return config.from_dict({"project": "acme-ml-prod", "service": service})


def test_log_filters_name_the_service_and_the_job():
    f_service, f_job = logs.filters(_cfg(name="tracking"), since="2026-11-28T10:00:00Z", severity="WARNING")
    assert f_service == ('resource.type="cloud_run_revision" AND resource.labels.service_name="tracking" AND '
                         'NOT logName:"cloudaudit.googleapis.com" AND timestamp>="2026-11-28T10:00:00Z" '
                         'AND severity>=WARNING')
    assert 'resource.type="cloud_run_job" AND resource.labels.job_name="tracking-migrate"' in f_job
    audit = logs.filters(_cfg(), audit=True)
    assert all(f.startswith('logName="projects/acme-ml-prod/logs/cloudaudit.googleapis.com%2Factivity"') for f in audit)
    assert any('protoPayload.resourceName:"instances/mlflow-db"' in f for f in audit)
    assert any('protoPayload.resourceName:"buckets/acme-ml-prod-mlflow-artifacts"' in f for f in audit)


def test_log_filter_for_one_callers_requests():
    (only,) = logs.filters(_cfg(name="tracking"), caller="user:Bob@Acme.com", severity="WARNING")
    assert only == ('resource.type="cloud_run_revision" AND resource.labels.service_name="tracking" AND '
                    'jsonPayload.caller="bob@acme.com" AND severity>=WARNING')


def test_since_and_severity():
    now = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)
    assert logs.parse_since("90m", now) == "2026-11-28T10:30:00Z"
    assert logs.parse_since("2d", now) == "2026-11-26T12:00:00Z"
    assert logs.parse_since(None, now) is None
    for bad in ("1 hour", "h", "-1h", "1y"):
        with pytest.raises(ConfigError):
            logs.parse_since(bad, now)
    assert logs.check_severity("warning") == "WARNING"
    with pytest.raises(ConfigError):
        logs.check_severity("LOUD")


def test_each_payload_kind_is_one_readable_line():
    base = {"timestamp": "2026-11-28T10:00:00.123456Z", "severity": "ERROR",
            "resource": {"labels": {"revision_name": "svc-00002-abc"}}}
    assert logs.line({**base, "textPayload": "a\nb"}) == "2026-11-28 10:00:00 ERROR    svc-00002-abc  a b"
    assert logs.message({"jsonPayload": {"message": "boom", "x": 1}}) == "boom"
    assert logs.message({"jsonPayload": {"x": 1}}) == '{"x": 1}'
    assert logs.message({"protoPayload": {"methodName": "m", "resourceName": "r", "status": {"code": 7, "message": "denied"},
                                          "authenticationInfo": {"principalEmail": "a@b"}}}) == "a@b m r FAILED: denied"
    assert logs.message({"httpRequest": {"requestMethod": "POST", "status": 503, "latency": "1.2s",
                                         "requestUrl": "/api"}}) == "POST 503 1.2s /api"


@pytest.mark.parametrize("image,env,version", [
    ("europe-west9-docker.pkg.dev/p/mlflow/mlflow-gcp:3.17.2@sha256:ab", None, "3.17.2"),
    ("europe-west9-docker.pkg.dev/p/mlflow/mlflow-gcp:3.17.2-0123456789ab@sha256:ab", None, "3.17.2"),
    ("europe-west9-docker.pkg.dev/p/mlflow/mlflow-gcp:3.18.10-0123456789ab", None, "3.18.10"),
    ("localhost:5000/mlflow-gcp:3.18.0", None, "3.18.0"),
    ("ghcr.io/x/mlflow@sha256:ab", None, None),
    ("ghcr.io/x/mlflow:latest", [{"name": "MLFLOW_VERSION", "value": "3.17.9"}], "3.17.9"),
    (None, None, None),
])
def test_mlflow_version_from_tag_or_env(image, env, version):
    assert status.mlflow_version_of(image, env) == version


def test_rules_in_words():
    assert status.describe_rule({"action": {"type": "Delete"}, "condition": {"age": 30, "matchesPrefix": ["tmp/"]}}) \
        == "delete objects under tmp/ older than 30 days"
    assert status.describe_rule({"action": {"type": "SetStorageClass", "storageClass": "COLDLINE"},
                                 "condition": {"age": 90}}) \
        == "move objects under the whole bucket older than 90 days to COLDLINE (nothing deleted)"


def test_scale_names_the_cheapest_tier_that_fits():
    assert scale.tier_that_fits(10, 1) == "db-f1-micro"
    assert scale.tier_that_fits(20, 1) == "db-g1-small"
    assert scale.tier_that_fits(40, 1) == "db-custom-1-3840"
    with pytest.raises(BudgetError) as err:
        scale.new_config(_cfg(), 40, None)
    assert "db-custom-1-3840 would fit" in str(err.value)
    with pytest.raises(ConfigError):
        scale.new_config(_cfg(), 3, 5)  # min above max


def test_upgrade_refuses_old_versions_and_given_images():
    with pytest.raises(ConfigError) as err:
        upgrade.target_config(_cfg(), "3.16.0")
    assert str(err.value).startswith("mlflow-version: ")
    with pytest.raises(MlflowGcpError) as err:
        upgrade.target_config(_cfg(image="ghcr.io/x/mlflow:1"), "3.17.3")
    assert "service.image is set" in str(err.value)


def test_saved_settings_keep_the_rest_and_never_break_the_file(tmp_path):
    path = tmp_path / "mlflow-gcp.toml"
    assert live.save_settings(path, {("service", "max_instances"): 3}) is False  # no file: nothing written
    path.write_text('project = "acme-ml-prod"\n[database]\ntier = "db-g1-small"\n')
    assert live.save_settings(path, {("service", "max_instances"): 3, ("service", "min_instances"): 1})
    cfg = config.load(path, env={})
    assert (cfg.service.max_instances, cfg.service.min_instances, cfg.database.tier) == (3, 1, "db-g1-small")
    with pytest.raises(ConfigError):
        live.save_settings(path, {("service", "max_instances"): 0})
    assert config.load(path, env={}).service.max_instances == 3


def test_paused_is_activation_policy_never_or_stopped():
    assert live.is_paused({"state": "RUNNABLE", "settings": {"activationPolicy": "NEVER"}})
    assert live.is_paused({"state": "STOPPED", "settings": {}})
    assert not live.is_paused({"state": "RUNNABLE", "settings": {"activationPolicy": "ALWAYS"}})
    assert not live.is_paused(None)


def test_saved_settings_keep_comments_order_and_layout(tmp_path):
    path = tmp_path / "mlflow-gcp.toml"
    original = (
        '# ML platform team, prod tracking server\n'
        'project = "acme-ml-prod"   # billing: ml-platform\n'
        '\n'
        '[service]\n'
        '# raised for the quarterly retrain\n'
        'max_instances = 4\n'
        '\n'
        '[database]\n'
        'tier = "db-g1-small"  # see capacity doc\n'
    )
    path.write_text(original)
    assert live.save_settings(path, {("service", "max_instances"): 6, ("service", "min_instances"): 1,
                                     ("service", "cpu"): None, ("artifacts", "lifecycle", "age_days"): None})
    text = path.read_text()
    assert text == original.replace("max_instances = 4\n", "max_instances = 6\nmin_instances = 1\n")
    cfg = config.load(path, env={})
    assert (cfg.service.max_instances, cfg.service.min_instances) == (6, 1)
