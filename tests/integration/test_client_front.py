"""The Cloud Run front stand-in itself: other tests (artifact sizes, security) rely on it."""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest
import requests

from tests.integration.conftest import FRONT_HOST, INVOKER
from tests.support.cloudrun_front import CloudRunFront

pytestmark = pytest.mark.slow

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"
MIB = 1024 * 1024


def _get(front, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(front.url + SEARCH, headers=headers, timeout=30)


def test_tokens_are_checked_like_cloud_run(stack):
    idp, front = stack.idp, stack.front
    assert _get(front, None).status_code == 403  # anonymous: Cloud Run's "Forbidden" page
    assert _get(front, idp.mint(INVOKER, "https://another-service.run.app")).status_code == 401
    assert _get(front, idp.mint(INVOKER, front.url + "/")).status_code == 200  # trailing slash
    expired = idp.mint(INVOKER, front.url)
    stack.clock.advance(3601)
    assert _get(front, expired).status_code == 401
    assert _get(front, idp.mint("someone@example.com", front.url)).status_code == 403
    forged = idp.mint(INVOKER, front.url)
    header, payload, _ = forged.split(".")
    assert _get(front, f"{header}.{payload}.AAAA").status_code == 401
    assert [s.reason for s in front.log] == [
        "no bearer token", "audience 'https://another-service.run.app' is not this service", "",
        "token expired", "someone@example.com lacks run.invoker", "bad signature",
    ]
    anonymous = _get(front, None)
    assert "Your client does not have permission to get URL" in anonymous.text
    refused = _get(front, "not-a-jwt")
    assert refused.status_code == 401
    assert "Your client does not have permission to the requested URL" in refused.text
    assert refused.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_bodies_over_the_cap_get_413(stack):
    front = CloudRunFront(stack.server.url, certs=stack.idp.certs, host=FRONT_HOST,
                          clock=stack.clock, max_body_bytes=1 * MIB).start()
    try:
        token = stack.idp.mint(INVOKER, front.url)
        headers = {"Authorization": f"Bearer {token}"}
        url = f"{front.url}/api/2.0/mlflow-artifacts/artifacts/{uuid.uuid4().hex}/blob.bin"
        over = requests.put(url, data=os.urandom(MIB + 1), headers=headers, timeout=60)
        assert over.status_code == 413
        chunked = requests.put(url, data=iter([os.urandom(256 * 1024)] * 5), headers=headers,
                               timeout=60)
        assert chunked.status_code == 413
        at_cap = requests.put(url, data=os.urandom(MIB), headers=headers, timeout=60)
        assert at_cap.status_code == 200
        assert [s.status for s in front.log] == [413, 413, 200]
    finally:
        front.close()


def test_the_default_cap_is_cloud_runs_32_mib(stack):
    token = stack.idp.mint(INVOKER, stack.front.url)
    url = f"{stack.front.url}/api/2.0/mlflow-artifacts/artifacts/{uuid.uuid4().hex}/big.bin"
    resp = requests.put(url, data=b"\0" * (32 * MIB + 1),
                        headers={"Authorization": f"Bearer {token}"}, timeout=120)
    assert resp.status_code == 413
    assert stack.front.log[-1].reason == f"body of {32 * MIB + 1} bytes"


def test_large_bodies_stream_through_both_ways(stack):
    token = stack.idp.mint(INVOKER, stack.front.url)
    headers = {"Authorization": f"Bearer {token}"}
    data = os.urandom(20 * MIB)
    url = f"{stack.front.url}/api/2.0/mlflow-artifacts/artifacts/{uuid.uuid4().hex}/model.bin"
    assert requests.put(url, data=data, headers=headers, timeout=120).status_code == 200
    got = hashlib.sha256()
    with requests.get(url, headers=headers, stream=True, timeout=120) as resp:
        assert resp.status_code == 200
        for piece in resp.iter_content(MIB):
            got.update(piece)
    assert got.hexdigest() == hashlib.sha256(data).hexdigest()
    assert stack.front.statuses() == {200: 2}
