"""The reliability scenarios, shared by the tests (small shapes) and bench/reliability.py (figures).

`ReliabilityStack` is the whole local stack: a private PostgreSQL with a small tier's
max_connections, the GCS emulator (files on disk), our entrypoint with the connection budget of
one instance, the identity provider and the Cloud Run front. Each scenario runs a fixed load of
real MLflow client calls through the front with the `gcp` plugin, breaks one part in the middle,
and returns `Figures`: user-visible errors, answers the client had to retry, seconds until a
probe request succeeded again, lost / duplicated / unacknowledged rows, peak connections.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlflow_gcp import budget

from tests.reliability import workload
from tests.reliability.stack import Emulator, Front, PrivatePostgres, ServerProcess
from tests.support.idp import LocalIdentityProvider

FRONT_HOST = "mlflow-tracking-rel4x9q2zz-ew.a.run.app"
INVOKER = "trainer@test-project.iam.gserviceaccount.com"
SLOT_ERROR = "remaining connection slots"


@dataclass
class Figures:
    scenario: str
    operations: int = 0
    user_errors: int = 0
    retried_answers: int = 0  # 5xx the front relayed or produced; the client retried them
    recover_s: float = 0.0
    lost: int = 0
    duplicated: int = 0
    unacknowledged_runs: int = 0
    peak_connections: int = 0
    max_connections: int = 0
    slot_errors: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    verification: dict = field(default_factory=dict)

    def row(self) -> dict:
        d = asdict(self)
        d.pop("errors")
        d.pop("verification")
        return d


class ConnectionSampler:
    """Peak client connections on the cluster, sampled every `interval` s."""

    def __init__(self, pg: PrivatePostgres, interval: float = 0.1):
        self.pg, self.interval, self.peak = pg, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pg-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.pg.client_connections())
            except Exception:  # noqa: BLE001 -- PostgreSQL may be down on purpose
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


class ReliabilityStack:
    def __init__(self, workdir: Path | None = None, workers: int = 2, instances: int = 1,
                 pool: tuple[int, int] | None = None):
        self.pool = pool
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="mlflow-gcp-rel-"))
        self.pg = PrivatePostgres().init()
        try:
            self.emulator = Emulator(self.workdir / "gcs").start()
            self.bucket = self.emulator.new_bucket()
            self.idp = LocalIdentityProvider().start()
            self.tokens: list[str] = []
            mint = self.idp.mint

            def recording_mint(*args, **kw):  # every ID token, to look for it in logs later
                token = mint(*args, **kw)
                self.tokens.append(token)
                return token

            self.idp.mint = recording_mint
            self.key_file = self.idp.write_key_file(self.workdir / "invoker-key.json", INVOKER)
            self.servers = [
                ServerProcess(self.server_env(workers, instances), self.workdir / "logs")
                for _ in range(instances)
            ]
            for server in self.servers:
                server.launch()
            for server in self.servers:
                server.wait_healthy()
            self.server = self.servers[0]
            self.front = Front(self.server.url, certs=self.idp.certs, host=FRONT_HOST,
                               allowed_invokers=[f"serviceAccount:{INVOKER}"]).start()
        except BaseException:
            self.close()
            raise

    def server_env(self, workers: int, instances: int) -> dict[str, str]:
        share = budget.connections_per_instance(self.pg.max_connections, instances)
        sizing = {"DB_CONNECTIONS": str(share)} if self.pool is None else {
            "DB_POOL_SIZE": str(self.pool[0]), "DB_MAX_OVERFLOW": str(self.pool[1])}
        return {
            **sizing,
            **self.pg.server_env(),
            "ARTIFACT_ROOT": f"gs://{self.bucket}/mlflow",
            "STORAGE_EMULATOR_HOST": self.emulator.host,
            "ALLOWED_HOSTS": FRONT_HOST,
            "WORKERS": str(workers),
            "DB_WAIT_SECONDS": "90",
        }

    @property
    def url(self) -> str:
        return self.front.url

    def client(self):
        return workload.client_env(self.key_file)

    def blobs(self) -> dict[str, bytes]:
        return self.emulator.blobs(self.bucket, "mlflow/")

    def server_output(self) -> str:
        return "".join(s.output() for s in self.servers)

    def close(self) -> None:
        for closer in (
            lambda: self.front.close(),
            lambda: [s.stop() for s in self.servers],
            lambda: self.idp.close(),
            lambda: self.emulator.stop(),
            lambda: self.pg.destroy(),
            lambda: shutil.rmtree(self.workdir, ignore_errors=True),
        ):
            try:
                closer()
            except Exception:  # noqa: BLE001 -- best effort: close the rest
                pass

    def __enter__(self) -> ReliabilityStack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------ scenarios


def _finish(name: str, stack: ReliabilityStack, result: workload.LoadResult, sampler: ConnectionSampler,
            front_before: int, slot_before: int, recover: float = 0.0) -> Figures:
    check = workload.verify(result, stack.pg.query, stack.blobs())
    slots = stack.server_output().count(SLOT_ERROR) - slot_before
    slots += sum(SLOT_ERROR in e for e in result.errors)
    fresh = stack.front.log[front_before:]
    return Figures(
        scenario=name,
        operations=result.shape.operations,
        user_errors=len(result.errors),
        retried_answers=sum(1 for s in fresh if s.status >= 500),
        recover_s=round(recover, 2),
        lost=check.lost,
        duplicated=check.duplicated,
        unacknowledged_runs=check.unacknowledged_runs,
        peak_connections=sampler.peak,
        max_connections=stack.pg.max_connections,
        slot_errors=slots,
        seconds=round(result.seconds, 1),
        errors=result.errors[:10],
        verification=asdict(check),
    )


def _with_fault(name: str, stack: ReliabilityStack, shape: workload.Shape, fault, at: float = 0.3,
                artifacts_probe: bool = False) -> Figures:
    """Run the load; when `at` of it is done, call `fault()`; measure until the load ends."""
    with stack.client():
        exp = workload.new_experiment(stack.url, name.replace(" ", "-"))
        front_before, slot_before = len(stack.front.log), stack.server_output().count(SLOT_ERROR)
        probe = workload.Probe(stack.url, exp, artifacts=artifacts_probe)
        with ConnectionSampler(stack.pg) as sampler, probe:
            result, threads = workload.start_load(stack.url, shape, exp)
            recover = 0.0
            if fault is not None:
                workload.wait_progress(result, at)
                since = time.monotonic()
                fault()
                ended = time.monotonic()
                workload.join(threads, 900)
                deadline = time.monotonic() + 30
                while not any(ok and t > ended for t, ok in probe.samples) and time.monotonic() < deadline:
                    time.sleep(0.1)
                recover = probe.recovery_seconds(since, ended)
            workload.join(threads, 900)
        return _finish(name, stack, result, sampler, front_before, slot_before, recover)


def load(stack: ReliabilityStack, shape: workload.Shape) -> Figures:
    return _with_fault("load", stack, shape, None)


def postgres_restart(stack: ReliabilityStack, shape: workload.Shape) -> Figures:
    return _with_fault("postgres restart", stack, shape, lambda: stack.pg.restart("fast"))


def server_killed(stack: ReliabilityStack, shape: workload.Shape) -> Figures:
    def fault() -> None:
        stack.server.kill()
        stack.server.start()

    return _with_fault("server killed", stack, shape, fault)


def gcs_stopped(stack: ReliabilityStack, shape: workload.Shape, outage: float = 3.0) -> Figures:
    def fault() -> None:
        stack.emulator.stop()
        time.sleep(outage)
        stack.emulator.start()

    # Artifacts come last in each run: stop the bucket while most uploads are still to come.
    return _with_fault("gcs stopped", stack, shape, fault, at=0.5, artifacts_probe=True)


def started_while_db_down(stack: ReliabilityStack, shape: workload.Shape, down: float = 4.0) -> Figures:
    """The server starts while PostgreSQL is down: it waits, and serves once the database is up."""
    stack.server.stop()
    stack.pg.stop()
    stack.server.launch()
    time.sleep(down)
    db_up = time.monotonic()
    stack.pg.start()
    stack.server.wait_healthy()
    recover = time.monotonic() - db_up
    figures = _with_fault("started with db down", stack, shape, None)
    figures.recover_s = round(recover, 2)
    return figures


def connection_budget(shape: workload.Shape, instances: int, workers: int,
                      pool: tuple[int, int] | None = None) -> Figures:
    """`instances` servers, each with its budgeted share of a 25-connection PostgreSQL, under load
    (clients spread over the servers directly: the front plays no part in the database budget).
    `pool` = (size, overflow) replaces the budget with fixed pools: the control experiment."""
    with ReliabilityStack(workers=workers, instances=instances, pool=pool) as stack, workload.client_env(None):
        urls = [s.url for s in stack.servers]
        exp = workload.new_experiment(urls[0], "budget")
        with ConnectionSampler(stack.pg, interval=0.05) as sampler:
            result = workload.run_load(urls, shape, exp)
        label = f"budget {instances}x{workers}" if pool is None else f"pool {pool[0]}+{pool[1]} {instances}x{workers}"
        figures = _finish(label, stack, result, sampler, len(stack.front.log), 0)
        return figures
