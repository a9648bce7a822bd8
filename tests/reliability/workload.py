"""A fixed load of real MLflow client calls, and an exact count of what was stored.

`run_load` starts `clients` threads, each an `MlflowClient` (our `gcp` auth plugin when the URL
is the front) doing, per run: create_run, one log_batch of params, `batches` log_batch calls of
`metrics` metrics each, `artifacts` small artifacts, set_terminated. Every call either returns
(acknowledged: recorded as such) or raises after the client's own retries (a user-visible error:
counted, and the writes it carried are not counted as acknowledged).

`verify` then reads PostgreSQL directly (not through MLflow) and the bucket, and compares with
what was acknowledged: lost rows (acknowledged, not stored), duplicated rows, and rows stored
without an acknowledgement (a retried create_run whose first answer was lost makes one: the
client sent it twice and MLflow has no idempotency key for it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# The MLflow client's own retries (urllib3 Retry on 408/429/500/502/503/504 and connection errors,
# every method): default count (7), back-off factor 1 instead of 2 so that a fault of a few
# seconds costs seconds, not minutes (7 retries with factor 1 still wait up to ~2 min in total).
CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_HTTP_POOL_MAXSIZE": "32",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


@contextlib.contextmanager
def client_env(key_file: Path | None):
    """This process's environment for MLflow clients: the plugin with `key_file`, or no auth."""
    drop = [k for k in os.environ if k.startswith(("MLFLOW_GCP_", "MLFLOW_TRACKING_"))]
    saved = {k: os.environ.get(k) for k in [*drop, *CLIENT_ENV, "GOOGLE_APPLICATION_CREDENTIALS", "NO_GCE_CHECK"]}
    for k in drop:
        os.environ.pop(k, None)
    os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    os.environ.update(CLIENT_ENV)
    os.environ["NO_GCE_CHECK"] = "true"
    if key_file is not None:
        os.environ["MLFLOW_TRACKING_AUTH"] = "gcp"
        os.environ["MLFLOW_GCP_CREDENTIALS_FILE"] = str(key_file)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass(frozen=True)
class Shape:
    clients: int = 16
    runs: int = 2  # per client
    params: int = 5
    batches: int = 3
    metrics: int = 20  # per batch
    artifacts: int = 1
    artifact_bytes: int = 2048

    @property
    def operations(self) -> int:
        return self.clients * self.runs * (3 + self.batches + self.artifacts)


@dataclass
class LoadResult:
    experiment_id: str
    tag: str
    shape: Shape
    seconds: float = 0.0
    done_ops: int = 0
    errors: list[str] = field(default_factory=list)
    runs: dict[str, str] = field(default_factory=dict)  # acknowledged run id -> run name
    params: set = field(default_factory=set)  # (run_id, key)
    metrics: set = field(default_factory=set)  # (run_id, key, step)
    artifacts: dict[str, bytes] = field(default_factory=dict)  # "run_id/small/name" -> content
    finished: set = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ack(self, kind: str, items) -> None:
        with self.lock:
            self.done_ops += 1
            getattr(self, kind).update(items)

    def fail(self, what: str, err: BaseException) -> None:
        with self.lock:
            self.done_ops += 1
            self.errors.append(f"{what}: {type(err).__name__}: {str(err)[:300]}")


def _client_loop(client, result: LoadResult, index: int, workdir: Path) -> None:
    from mlflow.entities import Metric, Param

    s = result.shape
    for r in range(s.runs):
        name = f"{result.tag}-c{index}-r{r}"
        try:
            run_id = client.create_run(result.experiment_id, run_name=name).info.run_id
            result.ack("runs", {run_id: name})
        except Exception as err:  # noqa: BLE001 -- a user-visible error is what we count
            result.fail(f"create_run {name}", err)
            continue
        params = [Param(f"p{k}", f"v{k}-{name}") for k in range(s.params)]
        try:
            client.log_batch(run_id, params=params)
            result.ack("params", {(run_id, p.key) for p in params})
        except Exception as err:  # noqa: BLE001
            result.fail(f"log_batch params {name}", err)
        for b in range(s.batches):
            now = int(time.time() * 1000)
            metrics = [Metric(f"m{j}", float(j * 1000 + b), now, b) for j in range(s.metrics)]
            try:
                client.log_batch(run_id, metrics=metrics)
                result.ack("metrics", {(run_id, m.key, m.step) for m in metrics})
            except Exception as err:  # noqa: BLE001
                result.fail(f"log_batch metrics {name}/{b}", err)
        for a in range(s.artifacts):
            content = (f"{name}/{a}:".encode() + os.urandom(s.artifact_bytes // 2).hex().encode())[: s.artifact_bytes]
            path = workdir / f"{name}-a{a}.txt"
            path.write_bytes(content)
            try:
                client.log_artifact(run_id, str(path), artifact_path="small")
                result.ack("artifacts", {f"{run_id}/small/{path.name}": content})
            except Exception as err:  # noqa: BLE001
                result.fail(f"log_artifact {name}/{a}", err)
        try:
            client.set_terminated(run_id)
            result.ack("finished", {run_id})
        except Exception as err:  # noqa: BLE001
            result.fail(f"set_terminated {name}", err)


def new_experiment(url: str, prefix: str = "rel") -> str:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=url).create_experiment(f"{prefix}-{uuid.uuid4().hex[:8]}")


def start_load(url: str | list[str], shape: Shape, experiment_id: str) -> tuple[LoadResult, list[threading.Thread]]:
    """Start the load in threads (client i uses urls[i % len(urls)]); join them, or use `run_load`."""
    from mlflow import MlflowClient

    result = LoadResult(experiment_id, f"t{uuid.uuid4().hex[:6]}", shape)
    workdir = Path(tempfile.mkdtemp(prefix="mlflow-gcp-load-"))
    urls = [url] if isinstance(url, str) else list(url)
    started = time.monotonic()
    running = [shape.clients]

    def worker(i: int) -> None:
        try:
            _client_loop(MlflowClient(tracking_uri=urls[i % len(urls)]), result, i, workdir)
        except BaseException as err:  # noqa: BLE001 -- a bug in the loop itself must show
            result.fail(f"client {i} crashed", RuntimeError(traceback.format_exc()[-500:]))
            raise err
        finally:
            result.seconds = time.monotonic() - started
            with result.lock:
                running[0] -= 1
                if running[0] == 0:  # the last client out removes the files they uploaded from
                    shutil.rmtree(workdir, ignore_errors=True)

    threads = [threading.Thread(target=worker, args=(i,), name=f"load-{i}", daemon=True) for i in range(shape.clients)]
    for t in threads:
        t.start()
    return result, threads


def run_load(url: str | list[str], shape: Shape, experiment_id: str, timeout: float = 900) -> LoadResult:
    result, threads = start_load(url, shape, experiment_id)
    join(threads, timeout)
    return result


def join(threads: list[threading.Thread], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        raise TimeoutError(f"load threads still running after {timeout:.0f} s: {stuck}")


def wait_progress(result: LoadResult, fraction: float, timeout: float = 300) -> None:
    """Block until `fraction` of the load's operations are done (to inject a fault mid-load)."""
    deadline = time.monotonic() + timeout
    target = int(result.shape.operations * fraction)
    while result.done_ops < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"load made {result.done_ops}/{target} operations in {timeout:.0f} s")
        time.sleep(0.05)


@dataclass
class Verification:
    intended_runs: int
    stored_runs: int
    lost_runs: int
    unacknowledged_runs: int  # stored, never acknowledged (e.g. a create_run retried after its answer was lost)
    duplicated_runs: int  # one name (one intended run) stored more than once
    lost_params: int
    duplicated_params: int
    lost_metrics: int
    duplicated_metrics: int
    unacknowledged_metrics: int
    lost_artifacts: int
    corrupt_artifacts: int
    unfinished_runs: int

    @property
    def lost(self) -> int:
        return self.lost_runs + self.lost_params + self.lost_metrics + self.lost_artifacts + self.corrupt_artifacts

    @property
    def duplicated(self) -> int:
        return self.duplicated_params + self.duplicated_metrics


def verify(result: LoadResult, query, blobs: dict[str, bytes]) -> Verification:
    """Compare what was acknowledged with PostgreSQL's rows (`query(sql, params)`) and `blobs`."""
    exp = int(result.experiment_id)
    runs = query("SELECT run_uuid, name, status FROM runs WHERE experiment_id = %s", (exp,))
    stored = {r[0]: (r[1], r[2]) for r in runs}
    names = Counter(name for name, _ in stored.values())
    params = query(
        "SELECT p.run_uuid, p.key FROM params p JOIN runs r ON r.run_uuid = p.run_uuid WHERE r.experiment_id = %s",
        (exp,),
    )
    metrics = query(
        "SELECT m.run_uuid, m.key, m.step FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
        "WHERE r.experiment_id = %s",
        (exp,),
    )
    param_set, metric_set = set(params), set(metrics)
    by_suffix = {}
    for name, content in blobs.items():
        parts = name.split("/")
        if len(parts) >= 4 and parts[-3] == "artifacts":
            by_suffix[f"{parts[-4]}/{parts[-2]}/{parts[-1]}"] = content
    lost_artifacts = sum(1 for key in result.artifacts if key not in by_suffix)
    corrupt = sum(1 for key, c in result.artifacts.items() if key in by_suffix and by_suffix[key] != c)
    acked = set(result.runs)
    return Verification(
        intended_runs=result.shape.clients * result.shape.runs,
        stored_runs=len(stored),
        lost_runs=len(acked - set(stored)),
        unacknowledged_runs=len(set(stored) - acked),
        duplicated_runs=sum(n - 1 for n in names.values() if n > 1),
        lost_params=len(result.params - param_set),
        duplicated_params=len(params) - len(param_set),
        lost_metrics=len(result.metrics - metric_set),
        duplicated_metrics=len(metrics) - len(metric_set),
        unacknowledged_metrics=len({m for m in metric_set if m[0] in acked} - result.metrics),
        lost_artifacts=lost_artifacts,
        corrupt_artifacts=corrupt,
        unfinished_runs=sum(1 for rid in result.finished if stored.get(rid, ("", ""))[1] != "FINISHED"),
    )


class Probe:
    """A real API call every `interval` s through `url`: when did the service stop and resume?"""

    def __init__(self, url: str, experiment_id: str, interval: float = 0.25, artifacts: bool = False):
        # The artifact listing reaches the bucket; the experiment read, the database.
        path = ("/api/2.0/mlflow-artifacts/artifacts?path=" + experiment_id if artifacts
                else f"/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}")
        self.url = url.rstrip("/") + path
        self.interval = interval
        self.samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="probe", daemon=True)

    def _loop(self) -> None:
        import requests

        auth = None
        if os.environ.get("MLFLOW_TRACKING_AUTH") == "gcp":
            from mlflow_gcp.client.auth import GcpAuth

            auth = GcpAuth()
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                ok = requests.get(self.url, auth=auth, timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            self.samples.append((t, ok))
            self._stop.wait(self.interval)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def failures(self, since: float) -> int:
        return sum(1 for t, ok in self.samples if t >= since and not ok)

    def recovery_seconds(self, since: float, ended: float) -> float:
        """From `since` (the fault began) to the first probe sent after `ended` (the fault was
        over) that succeeded, past any failure: the outage a user saw, fault included."""
        samples = list(self.samples)
        failures = [t for t, ok in samples if t >= since and not ok]
        start = max([ended, *failures])
        back = [t for t, ok in samples if ok and t >= start and (t > start or not failures)]
        if not back:
            raise RuntimeError("the service did not answer again while the probe ran")
        return back[0] - since
