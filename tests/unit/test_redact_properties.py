"""`redact` over passwords as people write them: a hand-written DB_URI whose password holds an
unencoded "@", ":" or spaces, a libpq key=value string (quoted as libpq requires), the query form,
and the same inside a longer log line. The password never survives, and in the plain forms
everything else does."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mlflow_gcp.redaction import redact

# Anything printable but the characters that end a URI's authority (a password holding "/", "?" or
# "#" unencoded is not a URI any driver parses); "@", ":", spaces and quotes included.
_URI_PASSWORD = st.text(st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="/?#"),
                        min_size=6, max_size=40).filter(lambda p: p.strip() == p and "@" in p or " " in p or len(p) > 5)
_ANY_PASSWORD = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_categories=("Cs",)),
                        min_size=6, max_size=40)
_HOSTS = st.sampled_from(["db.internal:5432", "10.0.0.5", "127.0.0.1:6543", "[::1]:5432", ""])
_SCHEMES = st.sampled_from(["postgresql", "postgresql+psycopg2", "postgres", "mysql+pymysql"])
_USERS = st.sampled_from(["mlflow", "u", "svc-user"])
_AROUND = st.sampled_from([("", ""), ("could not connect to ", " (timeout)"), ("DB_URI=", ""),
                           ("starting: mlflow --backend-store-uri ", " --port 5000"), ("'", "'"), ('"', '",')])


def _libpq_quote(value: str) -> str:
    """libpq's rule: quote (with \\' and \\\\ escaped) when empty or holding spaces or quotes."""
    if value and not any(c in value for c in " \t\r\n\f\v'\\\""):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@settings(max_examples=500, deadline=None)
@given(password=_URI_PASSWORD, scheme=_SCHEMES, user=_USERS, host=_HOSTS, around=_AROUND)
def test_a_hand_written_uri_loses_its_whole_password(password, scheme, user, host, around):
    path = "/mlflow" if host else "/mlflow?host=/cloudsql/acme:europe-west9:db"
    before, after = around
    uri = f"{scheme}://{user}:{password}@{host}{path}"
    assume(password not in f"{before}{scheme}://{user}:***@{host}{path}{after}")
    out = redact(f"{before}{uri}{after}")
    assert password not in out
    assert out == f"{before}{scheme}://{user}:***@{host}{path}{after}"


@settings(max_examples=500, deadline=None)
@given(password=_ANY_PASSWORD, key=st.sampled_from(["password", "PASSWORD", "passphrase"]),
       spaced=st.booleans(), first=st.booleans())
def test_a_libpq_key_value_string_loses_its_password(password, key, spaced, first):
    eq = " = " if spaced else "="
    pair = f"{key}{eq}{_libpq_quote(password)}"
    rest = "host=db.internal port=5432 user=mlflow dbname=mlflow"
    text = f"{pair} {rest}" if first else f"{rest} {pair} sslmode=require"
    expected = f"{key}{eq}***"
    expected = f"{expected} {rest}" if first else f"{rest} {expected} sslmode=require"
    assume(password not in expected)
    out = redact(text)
    assert password not in out
    assert out == expected


@settings(max_examples=300, deadline=None)
@given(password=st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="&#'\""),
                        min_size=6, max_size=40))
def test_the_query_form_loses_its_password(password):
    text = f"postgresql+psycopg2://mlflow@/mlflow?host=/cloudsql/a:b:c&password={password}&sslmode=disable"
    # Only the password's own place: a password that is also a piece of the rest ("postgr") would
    # make the expected text star that piece too.
    assume(text.count(password) == 1)
    assert redact(text) == text.replace(password, "***")


@settings(max_examples=300, deadline=None)
@given(password=_URI_PASSWORD, noise=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60))
def test_no_password_survives_in_a_longer_line(password, noise):
    # Whatever follows the URI on the line (an e-mail address, another "@"), the password goes;
    # more than it may go too, which is the safe side.
    line = f"error: postgresql://mlflow:{password}@db.internal:5432/mlflow {noise}"
    assume(password not in f"error: postgresql://mlflow:***@db.internal:5432/mlflow {noise}")
    assert password not in redact(line)


def test_redaction_is_stable():
    for text in ("postgresql://u:***@h/db", "password=*** host=h", "sqlite:////data/mlflow.db", "gs://bucket/a:b@c"):
        assert redact(redact(text)) == redact(text) == text


def test_a_failed_gcloud_command_does_not_echo_the_passwords_in_its_arguments():
    from tests.fakegcp.gcloud import GcloudError

    err = GcloudError(["sql", "users", "create", "mlflow", "--password=Seed-pass_1", "--root-password=root-Pass_1",
                       "--set-env-vars=DB_URI=postgresql://mlflow:Seed-pass_1@/mlflow?host=/cloudsql/p:r:i"],
                      1, "ERROR: (gcloud.sql.users.create) boom")
    assert "Seed-pass_1" not in str(err) and "root-Pass_1" not in str(err)
    assert "gcloud sql users create mlflow" in str(err) and "boom" in str(err)
