"""Config: defaults, lookup order, and one clear `field: message` per bad setting."""

from pathlib import Path

import pytest

from mlflow_gcp import config
from mlflow_gcp.errors import BudgetError, ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mlflow-gcp.toml"
    path.write_text(text)
    return path


def problems(excinfo) -> dict[str, str]:
    return dict(excinfo.value.problems)


def test_defaults_follow_the_old_scripts_where_sound():
    cfg = config.load(env={}, overrides={"project": "acme-ml-prod"}, path="/nonexistent.toml")
    assert cfg.region == "europe-west9"
    assert cfg.database.instance == "mlflow-db"
    assert cfg.database.tier == "db-f1-micro"
    assert cfg.database.version == "POSTGRES_15"
    assert cfg.database.database == "mlflow"
    assert cfg.bucket_name == "acme-ml-prod-mlflow-artifacts"
    assert cfg.artifacts.lifecycle.days == 90
    # The old 90-day delete over the whole root broke registered models: archive by default.
    assert cfg.artifacts.lifecycle.action == "archive"
    assert (cfg.service.min_instances, cfg.service.max_instances, cfg.service.port) == (0, 10, 8080)
    assert cfg.database.backup_start_time == "03:00"
    assert (cfg.database.maintenance_day_number, cfg.database.maintenance_hour) == (7, 4)
    assert cfg.access.mode == "private"
    assert cfg.database.deletion_protection and cfg.database.point_in_time_recovery
    assert cfg.instance_connection_name == "acme-ml-prod:europe-west9:mlflow-db"
    assert cfg.server_service_account_email == "mlflow-server@acme-ml-prod.iam.gserviceaccount.com"
    # The default deployment must fit the default tier's connection budget.
    assert cfg.pool().per_engine >= 1


def test_every_field_has_a_description():
    def walk(model):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, config.BaseModel):
                walk(ann)

    walk(config.Config)


def test_lookup_order_flag_over_env_over_file(tmp_path):
    path = write(tmp_path, 'project = "file-project"\n[database]\ntier = "db-g1-small"\n')
    env = {"MLFLOW_GCP_PROJECT": "env-project", "MLFLOW_GCP_DATABASE__TIER": "db-custom-1-3840"}
    assert config.load(path, env={}).project == "file-project"
    cfg = config.load(path, env=env)
    assert (cfg.project, cfg.database.tier) == ("env-project", "db-custom-1-3840")
    cfg = config.load(path, env=env, overrides={"project": "flag-project"})
    assert (cfg.project, cfg.database.tier) == ("flag-project", "db-custom-1-3840")


def test_config_file_from_environment(tmp_path):
    dev = tmp_path / "dev.toml"
    dev.write_text('project = "acme-ml-dev"\n')
    assert config.load(env={"MLFLOW_GCP_CONFIG": str(dev)}).project == "acme-ml-dev"


def test_env_values_are_parsed_like_file_values():
    env = {
        "MLFLOW_GCP_PROJECT": "acme-ml-prod",
        "MLFLOW_GCP_SERVICE__MAX_INSTANCES": "4",
        "MLFLOW_GCP_DATABASE__POINT_IN_TIME_RECOVERY": "false",
        "MLFLOW_GCP_ACCESS__MEMBERS": "user:a@x.com, group:ml@x.com",
        "MLFLOW_GCP_LABELS": "team=ml,env=prod",
        "MLFLOW_GCP_API_ROOT": "http://127.0.0.1:1",  # an emulation setting, not a field
    }
    cfg = config.load("/nonexistent.toml", env=env)
    assert cfg.service.max_instances == 4
    assert cfg.database.point_in_time_recovery is False
    assert cfg.access.members == ["user:a@x.com", "group:ml@x.com"]
    assert cfg.labels == {"team": "ml", "env": "prod"}


@pytest.mark.parametrize(
    "text, field",
    [
        ('project = "Bad_Project"', "project"),
        ('project = "short"', "project"),
        ('project = "acme-ml-prod"\nregion = "Europe West"', "region"),
        ('project = "acme-ml-prod"\n[service]\nname = "MLflow"', "service.name"),
        ('project = "acme-ml-prod"\n[service]\nname = "mlflow-"', "service.name"),
        ('project = "acme-ml-prod"\n[database]\ninstance = "1db"', "database.instance"),
        ('project = "acme-ml-prod"\n[database]\ntier = "db-n1-standard-99"', "database.tier"),
        ('project = "acme-ml-prod"\n[database]\nbackup_start_time = "3am"', "database.backup_start_time"),
        ('project = "acme-ml-prod"\n[artifacts]\nbucket = "my-google-bucket"', "artifacts.bucket"),
        ('project = "acme-ml-prod"\n[artifacts]\nbucket = "192.168.5.4"', "artifacts.bucket"),
        ('project = "acme-ml-prod"\n[artifacts]\nbucket = "ab"', "artifacts.bucket"),
        ('project = "acme-ml-prod"\n[artifacts.lifecycle]\ndays = 0', "artifacts.lifecycle.days"),
        ('project = "acme-ml-prod"\n[artifacts.lifecycle]\naction = "delete"', "artifacts.lifecycle"),
        ('project = "acme-ml-prod"\n[access]\nmembers = ["allUsers"]', "access.members"),
        ('project = "acme-ml-prod"\n[access]\nmembers = ["bob@x.com"]', "access.members"),
        ('project = "acme-ml-prod"\n[databse]\ntier = "db-g1-small"', "databse"),
        ('project = "acme-ml-prod"\n[service]\nmlflow_version = "2.9.2"', "service.mlflow_version"),
        # Another series than the lock's: the server's use of MLflow internals was not checked there.
        ('project = "acme-ml-prod"\n[service]\nmlflow_version = "3.18.0"', "service.mlflow_version"),
        ('project = "acme-ml-prod"\n[service]\nmemory = "1GB"', "service.memory"),
        # One image kept would leave nothing to roll back to.
        ('project = "acme-ml-prod"\n[service]\nimages_kept = 1', "service.images_kept"),
        ('project = "acme-ml-prod"\n[service]\nmin_instances = 5\nmax_instances = 2', "service"),
        # Cloud Run's CPU/memory pairs: 1 CPU takes at most 4Gi, 4 CPUs at least 2Gi.
        ('project = "acme-ml-prod"\n[service]\nmemory = "8Gi"', "service"),
        ('project = "acme-ml-prod"\n[service]\ncpu = "4"\nmemory = "1Gi"', "service"),
        ('project = "acme-ml-prod"\n[service]\nbuild_service_account = "mlflow-server"', "service"),
        ('project = "acme-ml-prod"\n[service]\nbuild_service_account = "Builder"', "service.build_service_account"),
        ('project = "acme-ml-prod"\n[database]\nprivate_ip = true', "database"),
        ("region = \"europe-west9\"", "project"),
    ],
)
def test_bad_settings_name_their_field(tmp_path, text, field):
    with pytest.raises(ConfigError) as excinfo:
        config.load(write(tmp_path, text), env={})
    assert field in problems(excinfo), excinfo.value.problems
    assert "Traceback" not in str(excinfo.value)


def test_all_problems_reported_at_once(tmp_path):
    text = 'project = "X"\nregion = "mars"\n[database]\ntier = "huge"\n'
    with pytest.raises(ConfigError) as excinfo:
        config.load(write(tmp_path, text), env={})
    assert {"project", "region", "database.tier"} <= set(problems(excinfo))


def test_broken_toml_names_the_file(tmp_path):
    path = write(tmp_path, "project = \n")
    with pytest.raises(ConfigError) as excinfo:
        config.load(path, env={})
    assert str(path) in str(excinfo.value) and "TOML" in str(excinfo.value)




def test_set_flags_and_unknown_keys():
    assert config.parse_set(["database.tier=db-g1-small"]) == {"database": {"tier": "db-g1-small"}}
    with pytest.raises(ConfigError) as excinfo:
        config.parse_set(["database.teir=db-g1-small", "nonsense"])
    assert set(problems(excinfo)) == {"database.teir", "nonsense"}


def test_budget_refusal_names_the_knob():
    cfg = config.load(
        "/nonexistent.toml", env={}, overrides={"project": "acme-ml-prod", "service": {"max_instances": 21}}
    )
    with pytest.raises(BudgetError) as excinfo:
        cfg.pool()
    msg = str(excinfo.value)
    assert "max_instances" in msg and "db-f1-micro" in msg and "25" in msg


def test_to_toml_round_trips(tmp_path):
    cfg = config.load(
        "/nonexistent.toml",
        env={},
        overrides={"project": "acme-ml-prod", "database": {"tier": "db-g1-small"}},
    )
    path = write(tmp_path, config.to_toml(cfg))
    assert config.load(path, env={}) == cfg


def test_derived_bucket_name_is_checked():
    with pytest.raises(ConfigError) as excinfo:
        config.load("/nonexistent.toml", env={}, overrides={"project": "google-ml-prod"})
    assert "derived from the project id" in str(excinfo.value)
