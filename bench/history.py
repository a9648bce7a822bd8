"""Long metric histories read back: MLflow's client's get_metric_history of one 100,000-point
metric, the UI's one request for the same history, and the chart request the UI makes for 20
runs of 10,000 points each.

The points are written by SQL straight into the server's database (the same rows for stock and
ours, in a second instead of minutes of log_batch calls on a busy machine): what is measured is
the read. Runs are created through MLflow's client. The history is read by `MlflowClient`
(which pages it in 25,000-point requests); the chart request is the one MLflow's UI builds
(`get-history-bulk-interval?run_ids=..&run_ids=..&metric_key=..&max_results=320`, chunk 9867 of
its build), sent as a browser does, accepting gzip.
"""

from __future__ import annotations

import gzip
import json
import statistics
import time

import psycopg2
import requests

from bench.servers import PG

LONG_POINTS = 100_000
CHART_RUNS, CHART_POINTS = 20, 10_000
CHART_MAX_RESULTS = 320  # the UI's default sampling for a chart


def _insert(database: str, run_id: str, key: str, points: int) -> None:
    conn = psycopg2.connect(dbname=database, **PG)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                'INSERT INTO metrics ("key", "value", "timestamp", "step", is_nan, run_uuid) '
                "SELECT %s, sin(i / 100.0) + i / 1e5, 1700000000000 + i, i, false, %s "
                "FROM generate_series(0, %s - 1) AS i", (key, run_id, points))
            cur.execute(
                'INSERT INTO latest_metrics ("key", "value", "timestamp", "step", is_nan, run_uuid) '
                "SELECT %s, sin(i / 100.0) + i / 1e5, 1700000000000 + i, i, false, %s "
                "FROM (SELECT %s - 1 AS i) last", (key, run_id, points))
    finally:
        conn.close()


def seed(base: str, database: str) -> dict:
    """One run with a 100,000-point `loss`, 20 runs with a 10,000-point `acc`."""
    from mlflow import MlflowClient

    client = MlflowClient(base)
    exp = client.create_experiment("bench-history")
    long_run = client.create_run(exp).info.run_id
    _insert(database, long_run, "loss", LONG_POINTS)
    chart_runs = []
    for _ in range(CHART_RUNS):
        run_id = client.create_run(exp).info.run_id
        _insert(database, run_id, "acc", CHART_POINTS)
        chart_runs.append(run_id)
    return {"long_run": long_run, "chart_runs": chart_runs}


def get_metric_history(base: str, seeded: dict, tries: int) -> float:
    """Median seconds of MlflowClient.get_metric_history for the 100,000 points (after one
    untimed call)."""
    from mlflow import MlflowClient

    client = MlflowClient(base)
    times = []
    for attempt in range(tries + 1):
        began = time.perf_counter()
        history = client.get_metric_history(seeded["long_run"], "loss")
        if attempt:
            times.append(time.perf_counter() - began)
        if len(history) != LONG_POINTS:
            raise AssertionError(f"history has {len(history)} points, not {LONG_POINTS}")
    return statistics.median(times)


def ui_history(base: str, seeded: dict, tries: int) -> float:
    """Median seconds of the UI's request for the whole 100,000-point history (one GET, no page
    size, as its metric page asks: `ajax-api/2.0/mlflow/metrics/get-history`), decoded and
    parsed as a browser does (after one untimed call)."""
    session = requests.Session()
    url = f"{base}/ajax-api/2.0/mlflow/metrics/get-history"
    params = {"run_uuid": seeded["long_run"], "run_id": seeded["long_run"], "metric_key": "loss"}
    times = []
    for attempt in range(tries + 1):
        began = time.perf_counter()
        resp = session.get(url, params=params, headers={"Accept-Encoding": "gzip, deflate, br, zstd"}, timeout=300)
        resp.raise_for_status()
        points = len(resp.json()["metrics"])
        if attempt:
            times.append(time.perf_counter() - began)
        if points != LONG_POINTS:
            raise AssertionError(f"history has {points} points, not {LONG_POINTS}")
    return statistics.median(times)


def chart_request(base: str, seeded: dict, tries: int) -> float:
    """Median seconds of the UI's bulk-interval request for 20 runs (after one untimed call)."""
    session = requests.Session()
    params = [("run_ids", r) for r in seeded["chart_runs"]]
    params += [("metric_key", "acc"), ("max_results", str(CHART_MAX_RESULTS))]
    url = f"{base}/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval"
    times = []
    for attempt in range(tries + 1):
        began = time.perf_counter()
        resp = session.get(url, params=params, headers={"Accept-Encoding": "gzip, deflate, br, zstd"}, timeout=300)
        resp.raise_for_status()
        points = len(resp.json().get("metrics", []))
        if attempt:
            times.append(time.perf_counter() - began)
        if points < CHART_RUNS * (CHART_MAX_RESULTS - 1):
            raise AssertionError(f"chart answer has {points} points")
    return statistics.median(times)


def client_floor(base: str, seeded: dict, tries: int) -> float:
    """Median seconds of MlflowClient.get_metric_history for the same 100,000 points against a
    stand-in that answers each page at once with the bytes this server sent (recorded once, its
    encoding kept): the client's own cost (HTTP, gzip, JSON -> protobuf -> Metric), which no
    server can go under. stock / floor is the best ratio any server could show on that row."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlsplit

    url = f"{base}/api/2.0/mlflow/metrics/get-history"
    params = {"run_uuid": seeded["long_run"], "run_id": seeded["long_run"], "metric_key": "loss",
              "max_results": 25000}
    pages: dict[str, tuple[bytes, dict]] = {}
    token = ""
    with requests.Session() as session:
        while token is not None:
            resp = session.get(url, params={**params, **({"page_token": token} if token else {})},
                               headers={"Accept-Encoding": "gzip, deflate"}, stream=True, timeout=300)
            resp.raise_for_status()
            raw = resp.raw.read(decode_content=False)
            pages[token] = (raw, {k: v for k, v in resp.headers.items() if k.lower() in ("content-type", "content-encoding")})
            body = gzip.decompress(raw) if resp.headers.get("content-encoding") == "gzip" else raw
            token = json.loads(body).get("next_page_token")

    class Replay(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body, headers = pages[parse_qs(urlsplit(self.path).query).get("page_token", [""])[0]]
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    Replay.protocol_version = "HTTP/1.1"
    server = ThreadingHTTPServer(("127.0.0.1", 0), Replay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        return get_metric_history(f"http://127.0.0.1:{server.server_port}", seeded, tries)
    finally:
        server.shutdown()
        server.server_close()
