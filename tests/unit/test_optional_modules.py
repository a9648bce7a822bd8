"""The worker's app is built without the optional packages MLflow's import would pull in
(server/optional_modules.py), and they still import and work when code uses them afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mlflow_gcp.server import optional_modules

WORKER = """
import json, os, sys
os.environ.pop("MLFLOW_GCP_PERMISSIONS", None)
os.environ["MLFLOW_ENABLE_AI_GATEWAY"] = {gateway!r}
from mlflow_gcp.server import optional_modules
refused = set()
hidden = optional_modules.hidden
def spy(names):
    class Recording:
        def __enter__(self):
            self.block = hidden(names)
            self.finder = self.block.__enter__()
            return self.finder
        def __exit__(self, *exc):
            refused.update(self.finder.refused)
            return self.block.__exit__(*exc)
    return Recording()
optional_modules.hidden = spy
from mlflow_gcp.server.app import create_app
create_app()
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in {hidden_names!r})
import mlflow.data, mlflow.models, mlflow.types
public = {{m.__name__: sorted(n for n in dir(m) if not n.startswith("_")) for m in (mlflow.data, mlflow.models, mlflow.types)}}
# Names the gateway-on worker has (it imports pandas and numpy) are read from the other one.
for name, names in json.loads(os.environ.get("EXPECTED_PUBLIC", "{{}}")).items():
    for attr in names:
        if hasattr(sys.modules[name], attr):
            public[name].append(attr) if attr not in public[name] else None
for name, sources in optional_modules.LATE_NAMES.items():  # each late name, the real one
    for source, names in sources.items():
        for attr in names:
            public[name].append(attr) if attr not in public[name] else None
            assert getattr(sys.modules[name], attr) is getattr(__import__(source, fromlist=[attr]), attr)
from mlflow.types import Schema, ColSpec
from mlflow.models import infer_signature, ModelSignature
from mlflow.data.evaluation_dataset import EvaluationDataset
import pandas, numpy, pyarrow, scipy.sparse
# Real use after startup: the packages load whole, and so does what MLflow left out.
sig = infer_signature(pandas.DataFrame({{"a": [1.0]}}), numpy.array([1]))
ds = EvaluationDataset(data=pandas.DataFrame({{"a": [1.0], "y": [1]}}), targets="y")
print(json.dumps({{"loaded": loaded, "refused": sorted(refused), "public": public,
    "use": [pyarrow.array([1, 2]).to_pylist(), scipy.sparse.csr_matrix([[0, 3]]).nnz,
            sig.inputs.input_names(), len(ds.features_data), str(Schema([ColSpec("double", "a")]))]}}))
"""


def _worker(gateway: str, expected_public: dict | None = None) -> dict:
    code = WORKER.format(gateway=gateway, hidden_names=set(optional_modules.hidden_for(gateway == "true")))
    env = {**os.environ, "EXPECTED_PUBLIC": json.dumps(expected_public or {})}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def workers():
    on = _worker("true")
    return {"true": on, "false": _worker("false", on["public"])}


@pytest.mark.parametrize("gateway", ["true", "false"])
def test_worker_app_imports_none_of_the_hidden_packages_and_they_work_afterwards(workers, gateway):
    got = workers[gateway]
    assert got["loaded"] == []
    assert got["use"] == [[1, 2], 1, ["a"], 1, "['a': double (required)]"]
    # MLflow refused a hidden package only in modules whose fallback was reviewed.
    assert {importer for _package, importer in got["refused"]} <= optional_modules.REVIEWED
    assert {package for package, _importer in got["refused"]} >= {"pyarrow"}


def test_without_pandas_and_numpy_mlflows_public_names_are_all_there(workers):
    # The gateway-on worker imported MLflow with pandas and numpy: the same names, late or not.
    on, off = workers["true"]["public"], workers["false"]["public"]
    for module in on:
        # `mlflow`: the package name an `import mlflow.types.llm` statement binds in mlflow.types.
        assert set(on[module]) - {"mlflow"} <= set(off[module]), module


def test_hidden_only_inside_the_block():
    with optional_modules.hidden(["a_package_never_installed_x", "json"]) as finder:
        with pytest.raises(ModuleNotFoundError) as err:
            __import__("a_package_never_installed_x.sub")
        assert err.value.name == "a_package_never_installed_x"  # the parent, as when not installed
        import json  # already imported: left alone

        assert json.dumps([1]) == "[1]"
    assert finder.refused == {("a_package_never_installed_x", __name__)}
    assert not any(isinstance(f, optional_modules._Hide) for f in sys.meta_path)
