"""Property tests: no input to the config loader or the CLI ever produces a traceback.

Whatever a user writes in mlflow-gcp.toml, MLFLOW_GCP_* variables or --set flags, the outcome is a
valid Config or a ConfigError whose every line is `field: message`.
"""

import subprocess
import sys

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlflow_gcp import config
from mlflow_gcp.cli.main import cli, main
from mlflow_gcp.errors import ConfigError

FIELDS = sorted(config.FIELD_PATHS)

scalars = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.text(max_size=10), max_size=3),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)


@st.composite
def config_dicts(draw):
    data: dict = {"project": draw(st.sampled_from(["acme-ml-prod", "x", "", "Bad Id"]))}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=6)):
        config._set(data, config.FIELD_PATHS[name], draw(scalars))
    if draw(st.booleans()):
        data[draw(st.text(max_size=12))] = draw(scalars)
    return data


def _assert_clean(err: ConfigError):
    assert err.problems
    for field, message in err.problems:
        assert field and message
        assert "Traceback (most recent call last)" not in message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_dicts())
def test_any_dict_is_a_config_or_field_errors(data):
    try:
        cfg = config.from_dict(data)
    except ConfigError as err:
        _assert_clean(err)
    else:
        # A valid config always round-trips through the file format.
        assert config.from_dict(config.tomllib.loads(config.to_toml(cfg))) == cfg


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), st.text(max_size=30), max_size=5))
def test_any_environment_is_a_config_or_field_errors(values):
    env = {f"MLFLOW_GCP_{k}": v for k, v in values.items()}
    env.setdefault("MLFLOW_GCP_PROJECT", "acme-ml-prod")
    try:
        config.load("/nonexistent.toml", env=env)
    except ConfigError as err:
        _assert_clean(err)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_file_text_is_a_config_or_one_error(text):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mlflow-gcp.toml"
        path.write_text(text, encoding="utf-8")
        try:
            config.load(path, env={"MLFLOW_GCP_PROJECT": "acme-ml-prod"})
        except ConfigError as err:
            _assert_clean(err)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=30), max_size=4))
def test_cli_set_flags_never_trace(assignments):
    args = ["config", "check", "--project", "acme-ml-prod", "--config", "/nonexistent.toml"]
    for a in assignments:
        args += ["--set", a]
    result = CliRunner().invoke(cli, args, standalone_mode=False, catch_exceptions=True)
    if result.exception is not None:
        assert isinstance(result.exception, (ConfigError, SystemExit)), repr(result.exception)


def test_cli_prints_one_line_per_bad_field(tmp_path, capsys):
    path = tmp_path / "mlflow-gcp.toml"
    path.write_text('project = "X"\n[database]\ntier = "huge"\n')
    code = main(["config", "check", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "project: project ids are" in err
    assert "database.tier: unknown tier 'huge'" in err
    assert "Traceback" not in err


def test_cli_in_a_subprocess_exits_non_zero_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow_gcp", "config", "check", "--project", "BAD"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "Error: project: project ids are 6-30 lowercase letters, digits or hyphens, start with a "
        "letter and do not end with a hyphen"
    ]


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version(flag):
    proc = subprocess.run([sys.executable, "-m", "mlflow_gcp", flag], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip()
