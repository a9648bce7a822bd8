"""Local mode's GCS emulator: the command it runs, and a loud, early failure when the installed
gcp-storage-emulator is missing or no longer has the internals the bounded paths replace."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from gcp_storage_emulator import storage
from gcp_storage_emulator.handlers import objects

from mlflow_gcp.cli.main import main
from mlflow_gcp.server import gcs_emulator, local

ROOT = Path(__file__).resolve().parents[2]


def test_local_mode_runs_the_packaged_emulator_on_disk_or_in_memory(tmp_path):
    on_disk = local.emulator_command(9023, tmp_path / "gcs", "b1")
    assert on_disk[:3] == [sys.executable, "-m", "mlflow_gcp.server.gcs_emulator"]
    assert on_disk[on_disk.index("--data-dir") + 1] == str(tmp_path / "gcs")
    assert on_disk[on_disk.index("--port") + 1] == "9023"
    assert on_disk[on_disk.index("--default-bucket") + 1] == "b1"
    assert "--in-memory" not in on_disk
    in_memory = local.emulator_command(9023, None, None)
    assert "--in-memory" in in_memory and "--data-dir" not in in_memory and "--default-bucket" not in in_memory


def test_the_installed_emulator_is_the_pinned_one_and_has_every_internal_we_patch():
    pin = re.search(r"^gcp-storage-emulator==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert pin and pin[1] == gcs_emulator.PINNED == gcs_emulator.installed_version()
    assert gcs_emulator.check_shape() == []


@pytest.fixture
def unpatched(monkeypatch):
    # patch() is idempotent through _STOCK: start each case from an unpatched module state.
    monkeypatch.setattr(gcs_emulator, "_STOCK", {})
    return monkeypatch


def test_a_missing_internal_is_named_and_nothing_is_patched(unpatched):
    unpatched.delattr(objects, "_finalize_resumable_object")
    stock_download = objects.download
    assert gcs_emulator.check_shape() == ["objects._finalize_resumable_object is gone"]
    with pytest.raises(gcs_emulator.UnsupportedEmulator) as err:
        gcs_emulator.patch()
    assert "objects._finalize_resumable_object is gone" in str(err.value)
    assert f"gcp-storage-emulator=={gcs_emulator.PINNED}" in str(err.value)
    assert objects.download is stock_download  # all or nothing
    assert gcs_emulator._STOCK == {}


def test_the_in_memory_emulator_keeps_the_stock_paths_so_a_changed_shape_does_not_stop_it(unpatched):
    unpatched.delattr(objects, "_finalize_resumable_object")
    local.check_emulator(bounded=False)
    with pytest.raises(local.LocalError, match="objects._finalize_resumable_object is gone"):
        local.check_emulator(bounded=True)


def test_a_changed_signature_is_named(unpatched):
    unpatched.setattr(storage.Storage, "add_to_resumable_upload", lambda self, file_id, content: None)
    [problem] = gcs_emulator.check_shape()
    assert problem.startswith("storage.Storage.add_to_resumable_upload takes (self, file_id, content)")


def test_the_emulator_process_refuses_to_start_on_a_changed_emulator(unpatched, tmp_path, capsys):
    unpatched.delattr(storage.Storage, "_hard_delete_file")
    assert gcs_emulator.main(["--data-dir", str(tmp_path), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: gcp-storage-emulator ") and "Storage._hard_delete_file is gone" in err


def test_local_cli_says_in_one_line_that_the_emulator_changed(unpatched, tmp_path, capsys):
    unpatched.delattr(objects, "_handle_conflict")
    port = str(local.free_port())
    assert main(["local", "--port", port, "--data-dir", str(tmp_path), "--gcs-emulator"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert "is not the shape local mode's bounded emulator patches: objects._handle_conflict is gone" in errors[0]
    assert f"(pip install gcp-storage-emulator=={gcs_emulator.PINNED})" in errors[0]
    assert not (tmp_path / "gcs").exists()  # refused before anything started


def test_local_cli_names_the_missing_emulator(unpatched, tmp_path, capsys):
    unpatched.setitem(sys.modules, "gcp_storage_emulator", None)  # as if not installed
    port = str(local.free_port())
    assert main(["local", "--port", port, "--data-dir", str(tmp_path), "--gcs-emulator"]) == 1
    assert f"Error: the GCS emulator is not installed ({local.EMULATOR_HINT})" in capsys.readouterr().err
