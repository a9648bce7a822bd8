"""Property tests over malformed server environments (what Cloud Run hands the container).

Whatever text the variables hold, `settings_from_env` either returns settings or raises
ServerEnvError: one line, starting with the name of a variable we document, never showing the
database password (neither DB_PASSWORD nor the one inside DB_URI). The entrypoint itself turns the
same inputs into one line on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlflow_gcp.errors import ServerEnvError
from mlflow_gcp.server.env import VARIABLES, settings_from_env

PASSWORD = "Zq8-secret-Pw-4711"

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_numbers = st.one_of(st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True).map(str))
_value = st.one_of(_text, _numbers, st.sampled_from(["", " ", "0", "-1", "nan", "inf", "1e309", "\n", "\x00",
                                                     "gs://", "file:///", "sqlite://", "*", "a,b,,", "8080 "]))
_uris = st.one_of(
    st.builds(lambda scheme, rest: f"{scheme}://u:{PASSWORD}@{rest}",
              st.sampled_from(["postgresql", "postgres", "postgresql+psycopg2", "mysql", "sqlite", "http", "PostgreSQL"]),
              _text),
    st.builds(lambda rest: f"postgresql://u@h/db?password={PASSWORD}&{rest}", _text),
    _text.map(lambda t: PASSWORD + t),
)
_envs = st.fixed_dictionaries(
    {},
    optional={name: (_uris if name == "DB_URI" else st.just(PASSWORD) if name == "DB_PASSWORD" else _value)
              for name in VARIABLES},
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(env=_envs)
def test_any_environment_is_settings_or_one_clear_line(env):
    try:
        settings_from_env(env)
    except ServerEnvError as err:
        message = str(err)
        assert "\n" not in message
        assert message.split(":", 1)[0] in VARIABLES, message
        assert PASSWORD not in message


@settings(max_examples=400, deadline=None)
@given(env=_envs, serving=st.booleans())
def test_settings_never_carry_a_password_in_what_is_logged(env, serving):
    try:
        s = settings_from_env(env, serving=serving)
    except ServerEnvError:
        return
    assert PASSWORD not in s.safe_db_uri


_bad_for_the_entrypoint = st.fixed_dictionaries({
    "DB_URI": st.just(f"postgresql://u:{PASSWORD}@127.0.0.1:1/db"),
    "ARTIFACT_ROOT": st.just("/tmp/artifacts"),
}, optional={"WORKERS": st.sampled_from(["0", "x", "99", "-1"]),
             "PORT": st.sampled_from(["0", "http", "65536"]),
             "DB_MIGRATE": st.sampled_from(["yes", "ALWAYS"])}).filter(
    lambda e: len(e) > 2)


@settings(max_examples=8, deadline=None)
@given(env=_bad_for_the_entrypoint, text=st.booleans())
def test_the_entrypoint_prints_one_line_and_exits_2(env, text):
    base = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    full = {**base, **env, "LOG_FORMAT": "text" if text else "json"}
    proc = subprocess.run([sys.executable, "-m", "mlflow_gcp.server"], env=full, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr
