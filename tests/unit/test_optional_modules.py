"""The worker's app is built without the optional packages MLflow's import would pull in
(server/optional_modules.py), and they still import and work when code uses them afterwards."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mlflow_gcp.server import optional_modules

WORKER = """
import os, sys
os.environ.pop("MLFLOW_GCP_PERMISSIONS", None)
from mlflow_gcp.server.app import create_app
create_app()
print(sorted(m for m in sys.modules if m.partition(".")[0] in {hidden!r}))
import pandas, pyarrow, scipy.sparse
# Real use after startup: the packages load whole.
print(pyarrow.array([1, 2]).to_pylist(), scipy.sparse.csr_matrix([[0, 3]]).nnz, len(pandas.DataFrame({{"a": [1]}})))
"""


def test_worker_app_imports_none_of_the_hidden_packages_and_they_work_afterwards():
    code = WORKER.format(hidden=set(optional_modules.HIDDEN))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[-2:] == ["[]", "[1, 2] 1 1"]


def test_hidden_only_inside_the_block():
    with optional_modules.hidden(["a_package_never_installed_x", "json"]):
        with pytest.raises(ModuleNotFoundError) as err:
            __import__("a_package_never_installed_x.sub")
        assert err.value.name == "a_package_never_installed_x"  # the parent, as when not installed
        import json  # already imported: left alone

        assert json.dumps([1]) == "[1]"
    assert not any(isinstance(f, optional_modules._Hide) for f in sys.meta_path)
