"""The server's own ID token check (server/identity.py) against the local identity stand-in."""

from __future__ import annotations

import pytest

from mlflow_gcp.server import identity

from tests.support.clock import FakeClock
from tests.support.cloudrun_front import strip_signature
from tests.support.idp import LocalIdentityProvider

SERVICE = "https://mlflow-tracking-7x2kq9ab3c-ew.a.run.app"


@pytest.fixture
def idp():
    clock = FakeClock()
    provider = LocalIdentityProvider(clock=clock).start()
    yield provider
    provider.close()


def _identity(idp, dev_header=False) -> identity.Identity:
    keys = identity.KeySet(idp.certs_url, clock=idp.clock)
    return identity.Identity(identity.Verifier([SERVICE], keys, clock=idp.clock), dev_header=dev_header)


def _headers(**values):
    return {k.replace("_", "-").lower(): v for k, v in values.items()}.get


def test_a_valid_token_names_its_caller_and_keys_are_fetched_once(idp):
    ident = _identity(idp)
    for email in ("Alice@Example.com", "bob@example.com"):
        token = idp.mint(email, SERVICE + "/")
        for _ in range(50):
            assert ident.caller(_headers(authorization=f"Bearer {token}")).email == email.lower()
    assert idp.certs_served == 1
    assert ident.verifier.keys.fetches == 1


@pytest.mark.parametrize("make, reason", [
    (lambda idp: idp.mint("a@example.com", "https://other.run.app"), "audience"),
    (lambda idp: idp.mint("a@example.com", SERVICE, iss="https://evil.example.com"), "issuer"),
    (lambda idp: idp.mint("a@example.com", SERVICE, email_verified=False), "verified email"),
    (lambda idp: idp.mint("a@example.com", SERVICE, exp=int(idp.clock()) - 120), "expired"),
    (lambda idp: strip_signature("Bearer " + idp.mint("a@example.com", SERVICE))[7:], "no signature"),
    (lambda idp: "not-a-jwt", "malformed"),
])
def test_invalid_tokens_are_refused_with_the_reason(idp, make, reason):
    with pytest.raises(identity.InvalidToken, match=reason):
        _identity(idp).caller(_headers(authorization=f"Bearer {make(idp)}"))


def test_a_token_signed_by_another_key_is_refused(idp):
    other = LocalIdentityProvider(clock=idp.clock)  # never started: only its key signs
    with pytest.raises(identity.InvalidToken, match="key Google does not publish"):
        _identity(idp).caller(_headers(authorization=f"Bearer {other.mint('a@example.com', SERVICE)}"))


def test_a_cached_token_still_expires(idp):
    ident = _identity(idp)
    token = idp.mint("a@example.com", SERVICE)
    assert ident.caller(_headers(authorization=f"Bearer {token}")).email == "a@example.com"
    idp.clock.advance(3600 + identity.LEEWAY_SECONDS + 1)
    with pytest.raises(identity.InvalidToken, match="expired"):
        ident.caller(_headers(authorization=f"Bearer {token}"))


def test_behind_cloud_run_the_intact_authorization_copy_is_the_one_verified(idp):
    """Cloud Run strips the signature of the X-Serverless-Authorization token it checked and
    passes Authorization on untouched: the client sends the token in both."""
    token = idp.mint("a@example.com", SERVICE)
    stripped = strip_signature(f"Bearer {token}")
    got = _identity(idp).caller(_headers(authorization=f"Bearer {token}",
                                         x_serverless_authorization=stripped))
    assert got.email == "a@example.com"
    with pytest.raises(identity.InvalidToken, match="no signature"):
        _identity(idp).caller(_headers(authorization=stripped))


def test_the_dev_header_counts_only_where_local_mode_turned_it_on(idp):
    forged = _headers(x_mlflow_gcp_dev_user="admin@example.com")
    with pytest.raises(identity.InvalidToken, match="no Google ID token"):
        _identity(idp).caller(forged)
    assert _identity(idp, dev_header=True).caller(forged).email == "admin@example.com"


def test_identity_is_off_unless_configured():
    assert identity.from_env({}) is None
    on = identity.from_env({identity.AUDIENCES_ENV: f"{SERVICE}, {identity.GCLOUD_CLIENT_ID}"})
    assert on.verifier.audiences == {SERVICE, identity.GCLOUD_CLIENT_ID}
    assert on.verifier.keys.url == identity.GOOGLE_CERTS_URL
    assert on.dev_header is False


def test_in_local_mode_a_request_naming_nobody_is_the_browsers_user(idp):
    local = identity.from_env({identity.DEV_HEADER_ENV: "1", identity.DEV_USER_ENV: "Admin@localhost"})
    assert local.caller(_headers()).email == "admin@localhost"
    assert local.caller(_headers(x_mlflow_gcp_dev_user="bob@example.com")).email == "bob@example.com"
    with pytest.raises(identity.InvalidToken, match="malformed"):  # a bad token is not nobody
        local.caller(_headers(authorization="Bearer forged"))


def test_the_dev_header_is_refused_on_cloud_run():
    with pytest.raises(RuntimeError, match="local mode only"):
        identity.from_env({identity.DEV_HEADER_ENV: "1", "K_SERVICE": "mlflow-tracking"})
