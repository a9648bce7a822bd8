"""Raw REST calls from keep-alive clients (one requests.Session per client), each client in its
own thread, bounded by a count and a deadline: the benchmark's setup (experiments, runs, the
search data) and the artifact put+get load. The write and search figures go through MLflow's own
client instead (bench/clients.py)."""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from dataclasses import dataclass

import requests

API = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"


@dataclass
class Result:
    ops: int
    seconds: float
    errors: int
    latencies: list[float]
    client_cpu: float = 0.0  # CPU seconds the client processes spent over the timed calls

    @property
    def client_cpu_ms(self) -> float:
        """Client CPU per call (ms)."""
        return self.client_cpu / self.ops * 1000 if self.ops else float("nan")

    @property
    def per_second(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000 if self.latencies else float("nan")

    @property
    def p90_ms(self) -> float:
        if len(self.latencies) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies, n=10)[-1] * 1000


# Headers every client sends (bench/permissions.py: an ID token).
HEADERS: dict[str, str] = {}


class Client:
    def __init__(self, base: str):
        self.base = base
        self.session = requests.Session()
        self.session.headers.update(HEADERS)

    def post(self, path: str, body: dict) -> dict:
        resp = self.session.post(self.base + API + path, json=body, timeout=60)
        resp.raise_for_status()
        return resp.json()

    def experiment(self, name: str) -> str:
        return self.post("/experiments/create", {"name": name})["experiment_id"]

    def run(self, experiment_id: str) -> str:
        body = {"experiment_id": experiment_id, "start_time": int(time.time() * 1000)}
        return self.post("/runs/create", body)["run"]["info"]["run_id"]


def parallel(clients: int, per_client: int, deadline_s: float, setup, op) -> Result:
    """`clients` threads; each calls setup(client, index) once and op(state, -1) once untimed,
    then op(state, i) up to `per_client` times or until the deadline. Only those are timed."""
    states = []
    for index in range(clients):
        client = Client(op.base)
        states.append(setup(client, index))
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def worker(index: int) -> None:
        # One untimed call each first: a fresh worker's first requests pay one-off costs (lazy
        # imports, query compilation, pool connections) that a running server has behind it.
        try:
            op(states[index], -1)
        except Exception:
            pass  # the timed calls count errors
        barrier.wait()
        for i in range(per_client):
            if time.perf_counter() > stop_at[0]:
                break
            began = time.perf_counter()
            try:
                op(states[index], i)
            except Exception:  # counted and shown: a benchmark reports failures, never hides them
                errors[index] += 1
                continue
            latencies[index].append(time.perf_counter() - began)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    stop_at[0] = began + deadline_s
    barrier.wait()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - began
    flat = [x for lat in latencies for x in lat]
    return Result(ops=len(flat), seconds=seconds, errors=sum(errors), latencies=flat)


class Op:
    """A callable with the base URL the clients talk to."""

    def __init__(self, base: str, fn):
        self.base, self.fn = base, fn

    def __call__(self, state, i):
        return self.fn(state, i)


def seed_search(base: str, experiment_id: str, runs: int, tags: int = 5) -> None:
    """`runs` runs with 10 params, `tags` tags and 10 metrics each (what a search returns)."""
    client = Client(base)
    for n in range(runs):
        run_id = client.run(experiment_id)
        now = int(time.time() * 1000)
        client.post("/runs/log-batch", {
            "run_id": run_id,
            "params": [{"key": f"p{k}", "value": f"v{n % 7}-{k}"} for k in range(10)],
            "tags": [{"key": f"t{k}", "value": f"tag{n % 3}"} for k in range(tags)],
            "metrics": [{"key": f"m{k}", "value": n + k / 10, "timestamp": now, "step": 0} for k in range(10)],
        })


def artifacts(base: str, clients: int, per_client: int, deadline: float, size: int = 2048) -> Result:
    """One op = PUT a small file through the server, then GET it back and compare."""
    payload = bytes(range(256)) * (size // 256)
    tag = uuid.uuid4().hex[:8]

    def setup(client, index):
        return client, index

    def op(state, i):
        client, index = state
        url = f"{client.base}{ARTIFACTS}/bench-{tag}/c{index}/f{i}.bin"
        client.session.put(url, data=payload, timeout=60).raise_for_status()
        got = client.session.get(url, timeout=60)
        got.raise_for_status()
        if got.content != payload:
            raise AssertionError("artifact bytes differ")

    return parallel(clients, per_client, deadline, setup, Op(base, op))
