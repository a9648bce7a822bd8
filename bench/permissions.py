"""What verified identities and MLflow permissions cost our server (issue 16's goal: log-batch
with permissions on within 15% of off), same machine, same PostgreSQL, same run.

    .venv/bin/python -m bench.permissions            # ~10 min on 2 cores
    .venv/bin/python -m bench.permissions --quick

Three configurations of our server (one worker each), each on its own fresh database: identities not verified (as
before), identities verified (the default for a private deployment), and permissions on
(identities verified, MLflow's auth app, an EDIT check on the fast metric path). The loads are
MLflow's own client with our plugin (bench/clients.py), its ID tokens minted by the local
identity stand-in, whose keys the servers fetch as they would Google's. The three run side by side and the loads take turns in short
blocks (A B C A B C ...), so that a busy neighbour on this shared machine slows all three alike;
each figure is the median over the blocks, each ratio the median of the per-block ratios against
"identity off".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone

from bench import clients, loads
from bench.run import log, machine
from bench.servers import Server
from tests.support.idp import LocalIdentityProvider

AUDIENCE = "https://mlflow-bench-4x2k9a-ew.a.run.app"
CALLER = "bench@acme.com"
CONFIGS = {
    "identity off": {},
    "identity verified": {"IDENTITY_AUDIENCES": AUDIENCE},
    "permissions on": {"IDENTITY_AUDIENCES": AUDIENCE, "MLFLOW_GCP_PERMISSIONS": "1",
                       "MLFLOW_GCP_ADMINS": "admin@acme.com"},
}
FULL = {"batch": {1: 40, 4: 20, 16: 8}, "metric": 80, "deadline": 20.0, "blocks": 3}
QUICK = {"batch": {1: 10, 4: 5, 16: 2}, "metric": 20, "deadline": 10.0, "blocks": 1}


def block(server: Server, exp: str, counts: dict) -> dict[str, float]:
    """One short block of each load against `server`, through MLflow's own client and our plugin."""
    figures = {}
    for n, per in counts["batch"].items():
        r = clients.run(server.url, "log_batch", n, per, counts["deadline"], exp)
        if r.errors:
            raise RuntimeError(f"{r.errors} log-batch errors")
        figures[f"log-batch 100 metrics/req, {n} client{'s' if n > 1 else ''}"] = r.per_second * 100
    r = clients.run(server.url, "log_metric", 1, counts["metric"], counts["deadline"], exp)
    if r.errors:
        raise RuntimeError(f"{r.errors} log-metric errors")
    figures["log-metric p50, 1 client"] = r.p50_ms
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.permissions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    counts = QUICK if args.quick else FULL
    idp = LocalIdentityProvider(lifetime=24 * 3600).start()
    key_dir = tempfile.mkdtemp(prefix="bench-keys-")
    # The client processes (bench/clients.py, spawned: they inherit this environment) get their
    # tokens from the plugin, with a service-account key whose token endpoint is the stand-in.
    os.environ.update({
        "MLFLOW_TRACKING_AUTH": "gcp", "MLFLOW_GCP_AUDIENCE": AUDIENCE,
        "MLFLOW_GCP_CREDENTIALS_FILE": str(idp.write_key_file(os.path.join(key_dir, "key.json"), CALLER)),
    })
    token = idp.mint(CALLER, AUDIENCE)
    # The bench's own REST calls (creating the experiment) send both headers, as the plugin does.
    loads.HEADERS.update({"Authorization": f"Bearer {token}", "X-Serverless-Authorization": f"Bearer {token}"})
    started, load_before = datetime.now(timezone.utc), os.getloadavg()
    # One worker each, as on Cloud Run's default 1 vCPU: with two, keep-alive clients land on the
    # workers by chance (3-1, 4-0...), which moves a block's figure more than what is measured.
    servers = {name: Server("ours", extra_env={**env, "IDENTITY_CERTS_URL": idp.certs_url, "WORKERS": "1"})
               for name, env in CONFIGS.items()}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    try:
        experiments = {}
        for name, server in servers.items():
            server.start()
            # The caller is not an admin: with permissions on, it creates (and so manages) the
            # experiment, and each log-batch is checked as any user's would be.
            experiments[name] = loads.Client(server.url).experiment(f"bench-{time.time_ns()}")
        for b in range(counts["blocks"]):
            log(f"block {b + 1} of {counts['blocks']}")
            for name, server in servers.items():
                runs[name].append(block(server, experiments[name], counts))
    finally:
        for server in servers.values():
            server.cleanup()
        idp.close()
    print(f"{started:%Y-%m-%d %H:%M} UTC, {machine()}")
    print(f"{'quick' if args.quick else 'full'} run, {counts['blocks']} blocks; load average "
          f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after (shared machine: noisy)\n")
    names = list(CONFIGS)
    print("| figure | " + " | ".join(names) + " | verified/off | permissions/off |")
    print("|---|" + "---:|" * (len(names) + 2))
    for figure in runs[names[0]][0]:
        medians = [statistics.median(r[figure] for r in runs[n]) for n in names]
        ratios = [statistics.median(a[figure] / o[figure] for a, o in zip(runs[n], runs[names[0]]))
                  for n in names[1:]]
        print(f"| {figure} | " + " | ".join(f"{v:,.1f}" for v in medians) + " | "
              + " | ".join(f"{r:.2f}" for r in ratios) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
