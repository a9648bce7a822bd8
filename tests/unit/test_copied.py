"""The guard of MLflow code this server copies (server/copied.py): a copy runs only while the
source it was written from is unchanged, and anything without a source never passes."""

from __future__ import annotations

import hashlib
import inspect

from mlflow_gcp.server import copied


def _sample(x):
    return x + 1


def test_the_digest_is_the_sha256_of_the_source():
    assert copied.digest(_sample) == hashlib.sha256(inspect.getsource(_sample).encode()).hexdigest()


def test_what_has_no_source_has_no_digest():
    assert copied.digest(None) is None  # a method MLflow no longer has (getattr's default)
    assert copied.digest(len) is None  # a builtin


def test_every_pair_must_match():
    recorded = copied.digest(_sample)
    assert copied.same([(_sample, recorded), (test_every_pair_must_match, copied.digest(test_every_pair_must_match))])
    assert not copied.same([(_sample, recorded), (_sample, "0" * 64)])
    assert not copied.same([(None, None)])  # no source never passes, even against a missing digest
