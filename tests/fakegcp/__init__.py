"""A stateful fake of the Google Cloud REST APIs mlflow-gcp uses (see docs/fakegcp.md).

    from tests.fakegcp import FakeGcp
    fake = FakeGcp().start()      # fake.url -> "http://127.0.0.1:PORT"
    ...                           # point clients at f"{fake.url}/{api}/{servicePath}"
    fake.stop()

In pytest, use the `fake_gcp` fixture from tests.fakegcp.fixtures.
"""

from .server import FakeGcp

__all__ = ["FakeGcp"]
