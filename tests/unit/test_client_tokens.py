"""Token sources and the token cache, against the local identity provider (real google-auth)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import pytest

from mlflow_gcp.client import tokens
from tests.support.clientenv import clean_env
from tests.support.clock import FakeClock
from tests.support.idp import LocalIdentityProvider

SA = "trainer@test-project.iam.gserviceaccount.com"
AUD = "https://mlflow-tracking-123456789.europe-west9.run.app"
GCLOUD_CLIENT_ID = "32555940559.apps.googleusercontent.com"  # gcloud's audience for user tokens


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def idp(clock):
    with LocalIdentityProvider(clock=clock) as provider:
        yield provider


@pytest.fixture
def key_file(idp, tmp_path):
    return idp.write_key_file(tmp_path / "key.json", SA)


def test_key_file_tokens_carry_the_audience_and_are_reused_until_the_margin(idp, key_file, clock):
    cache = tokens.TokenCache(lambda: tokens.KeyFileSource(str(key_file)), clock=clock)
    first = cache.get(AUD)
    claims = tokens.jwt_claims(first)
    assert claims["aud"] == AUD and claims["email"] == SA
    clock.advance(3600 - tokens.REFRESH_MARGIN - 5)
    assert cache.get(AUD) == first and cache.fetches == 1
    clock.advance(10)  # now inside the margin: renewed before it expires
    second = cache.get(AUD)
    assert second != first and cache.fetches == 2
    assert tokens.jwt_claims(second)["exp"] > claims["exp"]


def test_tokens_are_cached_per_audience(idp, key_file, clock):
    cache = tokens.TokenCache(lambda: tokens.KeyFileSource(str(key_file)), clock=clock)
    other = "https://other-service-123456789.europe-west9.run.app"
    assert tokens.jwt_claims(cache.get(AUD))["aud"] == AUD
    assert tokens.jwt_claims(cache.get(other))["aud"] == other
    cache.get(AUD)
    cache.get(other)
    assert cache.fetches == 2 == idp.issued_count()


def test_concurrent_callers_wait_for_one_refresh(idp, key_file, clock):
    cache = tokens.TokenCache(lambda: tokens.KeyFileSource(str(key_file)), clock=clock)
    barrier = threading.Barrier(16)
    seen: list[str] = []

    def call() -> None:
        barrier.wait()
        seen.append(cache.get(AUD))

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 16 and len(set(seen)) == 1
    assert cache.fetches == 1 == idp.issued_count()


def test_a_rejected_token_is_replaced_once_for_all_who_saw_it(idp, key_file, clock):
    cache = tokens.TokenCache(lambda: tokens.KeyFileSource(str(key_file)), clock=clock)
    rejected = cache.get(AUD)
    clock.advance(1)  # tokens minted in the same second with the same claims are identical
    fresh = cache.refresh_after_rejection(AUD, rejected)
    # A second thread that saw the same 401 gets the replacement, not another fetch.
    assert cache.refresh_after_rejection(AUD, rejected) == fresh != rejected
    assert cache.fetches == 2


def test_a_short_lived_token_is_used_for_half_its_life(idp, key_file, clock):
    idp.lifetime = 240  # e.g. gcloud handing out its own cached token with 4 minutes left
    cache = tokens.TokenCache(lambda: tokens.KeyFileSource(str(key_file)), clock=clock)
    token = cache.get(AUD)
    clock.advance(100)
    assert cache.get(AUD) == token and cache.fetches == 1
    clock.advance(30)
    assert cache.get(AUD) != token and cache.fetches == 2


def test_a_bad_key_file_is_a_clear_error(tmp_path, clock):
    bad = tmp_path / "key.json"
    bad.write_text(json.dumps({"type": "service_account", "client_email": SA,
                               "token_uri": "http://127.0.0.1:9/token", "private_key": "nope"}))
    cache = tokens.TokenCache(lambda: tokens.KeyFileSource(str(bad)), clock=clock)
    with pytest.raises(tokens.TokenError, match="is not a usable service-account key") as err:
        cache.get(AUD)
    assert "nope" not in str(err.value)


def test_a_refused_grant_is_a_clear_error(idp, key_file, clock, tmp_path):
    # A key the token endpoint does not know (revoked, or from another project).
    other = LocalIdentityProvider(clock=clock).start()
    try:
        stranger = other.write_key_file(tmp_path / "stranger.json", SA)
    finally:
        other.close()
    info = json.loads(stranger.read_text())
    info["token_uri"] = idp.token_uri
    stranger.write_text(json.dumps(info))
    cache = tokens.TokenCache(lambda: tokens.KeyFileSource(str(stranger)), clock=clock)
    with pytest.raises(tokens.TokenError, match="could not mint an ID token"):
        cache.get(AUD)
    assert idp.refused == ["signed by an unknown key"]


# --- which source -------------------------------------------------------------------------------


def _env(**extra) -> dict:
    return clean_env({}, **extra)


def test_source_order(key_file, tmp_path):
    user_adc = tmp_path / "adc.json"
    user_adc.write_text(json.dumps({"type": "authorized_user", "client_id": "x",
                                    "client_secret": "y", "refresh_token": "z"}))
    pick = tokens.resolve_source
    assert isinstance(pick(_env(MLFLOW_GCP_CREDENTIALS_FILE=str(key_file),
                                MLFLOW_GCP_IMPERSONATE_SERVICE_ACCOUNT=SA)), tokens.KeyFileSource)
    assert isinstance(pick(_env(MLFLOW_GCP_IMPERSONATE_SERVICE_ACCOUNT=SA,
                                GOOGLE_APPLICATION_CREDENTIALS=str(key_file))),
                      tokens.ImpersonatedSource)
    chosen = pick(_env(GOOGLE_APPLICATION_CREDENTIALS=str(key_file)))
    assert isinstance(chosen, tokens.KeyFileSource) and chosen.path == str(key_file)
    # User credentials cannot mint ID tokens for an audience: not a key-file source.
    with pytest.raises(tokens.TokenError, match="no Google credentials found") as err:
        pick(_env(GOOGLE_APPLICATION_CREDENTIALS=str(user_adc)))
    assert "MLFLOW_GCP_CREDENTIALS_FILE" in str(err.value) and "gcloud auth login" in str(err.value)


def test_a_missing_key_file_is_named(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(tokens.TokenError, match=f"MLFLOW_GCP_CREDENTIALS_FILE={missing}: no such"):
        tokens.resolve_source(_env(MLFLOW_GCP_CREDENTIALS_FILE=str(missing)))


def test_impersonation_without_own_credentials_says_what_to_run(tmp_path):
    # In a subprocess: google-auth reads NO_GCE_CHECK at import, and this must not probe
    # the real metadata server.
    script = textwrap.dedent(f"""
        from mlflow_gcp.client import tokens
        source = tokens.resolve_source()
        try:
            source.fetch({AUD!r})
        except tokens.TokenError as err:
            print(type(source).__name__, "|", err)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        env=clean_env(MLFLOW_GCP_IMPERSONATE_SERVICE_ACCOUNT=SA, CLOUDSDK_CONFIG=str(tmp_path),
                      HOME=str(tmp_path)),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"ImpersonatedSource | impersonating {SA} needs your own credentials first "
        "(run `gcloud auth application-default login`)"
    )


# --- gcloud, the last resort --------------------------------------------------------------------

FAKE_GCLOUD = """#!{python}
# Stands in for `gcloud auth print-identity-token`: a user account refuses --audiences, as the
# real command does ("Invalid account type for `--audiences`. Requires valid service account.").
import json, pathlib, sys
here = pathlib.Path(__file__).parent
state = json.loads((here / "state.json").read_text())
with open(here / "calls.log", "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
auds = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--audiences=")]
if auds:
    if state["account"] == "user":
        sys.stderr.write("ERROR: (gcloud.auth.print-identity-token) Invalid account type for "
                         "`--audiences`. Requires valid service account.\\n")
        sys.exit(1)
    print(state["tokens"][auds[0]])
else:
    print(state["tokens"]["default"])
"""


def _fake_gcloud(tmp_path, account: str, tokens_by_aud: dict) -> str:
    path = tmp_path / "gcloud"
    path.write_text(FAKE_GCLOUD.replace("{python}", sys.executable))
    path.chmod(0o755)
    (tmp_path / "state.json").write_text(json.dumps({"account": account, "tokens": tokens_by_aud}))
    return str(path)


def test_gcloud_user_login_falls_back_to_gcloud_audience_once(idp, clock, tmp_path):
    user_token = idp.mint("dev@example.com", GCLOUD_CLIENT_ID)
    gcloud = _fake_gcloud(tmp_path, "user", {"default": user_token})
    source = tokens.resolve_source(_env(MLFLOW_GCP_GCLOUD=gcloud))
    assert isinstance(source, tokens.GcloudSource)
    cache = tokens.TokenCache(lambda: source, clock=clock)
    assert cache.get(AUD) == user_token
    clock.advance(3500)
    cache.get(AUD)
    calls = (tmp_path / "calls.log").read_text().splitlines()
    # Asked once with the audience, refused, and from then on without it.
    assert calls == [
        f"auth print-identity-token --audiences={AUD} --quiet",
        "auth print-identity-token --quiet",
        "auth print-identity-token --quiet",
    ]


def test_gcloud_service_account_gets_the_service_audience(idp, clock, tmp_path):
    sa_token = idp.mint(SA, AUD)
    gcloud = _fake_gcloud(tmp_path, "service", {AUD: sa_token, "default": "unused"})
    cache = tokens.TokenCache(lambda: tokens.GcloudSource(gcloud), clock=clock)
    assert cache.get(AUD) == sa_token


def test_gcloud_failure_is_one_line_with_the_fix(tmp_path, clock):
    gcloud = tmp_path / "gcloud"
    gcloud.write_text("#!/bin/sh\necho 'ERROR: (gcloud.auth.print-identity-token) You do not "
                      "currently have an active account selected.' >&2\nexit 1\n")
    gcloud.chmod(0o755)
    cache = tokens.TokenCache(lambda: tokens.GcloudSource(str(gcloud)), clock=clock)
    with pytest.raises(tokens.TokenError) as err:
        cache.get(AUD)
    assert str(err.value) == (
        "gcloud could not print an identity token: ERROR: (gcloud.auth.print-identity-token) You "
        "do not currently have an active account selected. (run `gcloud auth login`)"
    )


def test_token_repr_hides_the_token(idp):
    token = tokens._token(idp.mint(SA, AUD), "test")
    assert token.value not in repr(token)


def test_off_google_cloud_the_metadata_probe_is_quiet_and_says_no():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket closes
    script = (
        "from mlflow_gcp.client import tokens\n"
        "try:\n    tokens.resolve_source()\n"
        "except tokens.TokenError as err:\n    print(err)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        env=clean_env(NO_GCE_CHECK="", GCE_METADATA_IP=closed, GCE_METADATA_HOST=closed),
    )
    assert proc.stdout.startswith("no Google credentials found")
    assert proc.stderr == ""  # no google-auth warning about the missing metadata server
