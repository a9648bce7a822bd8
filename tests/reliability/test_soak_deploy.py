"""Soak of the control plane against the fake of Google's APIs: 10 plan/up cycles with seeded
random faults (refused calls and lost answers, 5xx, 429, 403, 409), each followed by a rerun, all
ending in the state an uninterrupted `up` of the same config reaches. And a public config never
gets past the config check without --allow-public (no API call at all).

Faults use no client-side retry (as `up` under test_deploy_up): a retried call whose first answer
was lost would wait for an operation the fake only finishes when polled (let_google_finish plays
the time that passes between the two runs).

Each cycle changes the config (so `up` has work to interrupt; only settings `up` converges both
ways: the disk size is set at creation only; invokers are left to test_deploy_invokers), injects one or two faults at
random mutating calls, lets Google's started operations finish, reruns, and compares the fake's
normalised state with a reference built by one clean `up` of that config.
"""

from __future__ import annotations

import logging
import random

import pytest

from mlflow_gcp import config
from mlflow_gcp.cli import main as cli_main
from mlflow_gcp.errors import MlflowGcpError

from tests.fakegcp.fixtures import _fake_gcp_clients, fake_gcp, fake_gcp_server, gcp_client  # noqa: F401
from tests.integration.test_deploy_up import (
    PROJECT, differences, let_google_finish, make_cfg, plan, secret_payloads, snapshot, up, user_password,
)

SEED = 8
CYCLES = 10
VARIANTS = {
    "default": {},
    "smaller": {"service__max_instances": 4},
    "warm": {"service__min_instances": 1, "service__max_instances": 3},
    "more-memory": {"service__memory": "2Gi"},
    "two-workers": {"service__workers": 2, "service__concurrency": 40},
}
# (status, after_apply): the call refused, or done by Google and its answer lost.
FAULTS = [(500, False), (500, True), (503, False), (503, True), (429, False), (403, False), (409, True)]


def state(fake) -> dict:
    """The fake's normalised state, with one fidelity gap of the fake papered over: its
    jobs.patch drops the launchStage that jobs.create defaults to GA (Cloud Run keeps GA)."""
    def fix(value):
        if isinstance(value, dict):
            if "/jobs/" in str(value.get("name", "")) and "template" in value and "/executions/" not in value["name"]:
                value.setdefault("launchStage", "GA")
            for v in value.values():
                fix(v)
        elif isinstance(value, list):
            for v in value:
                fix(v)
        return value

    return fix(snapshot(fake))


def _references(fake) -> dict[str, dict]:
    refs = {}
    for name, overrides in VARIANTS.items():
        fake.reset()
        up(make_cfg(**overrides))
        refs[name] = state(fake)
    fake.reset()
    return refs


def test_ten_cycles_with_random_faults_converge_to_the_uninterrupted_state(fake_gcp, caplog):
    caplog.set_level(logging.DEBUG)
    refs = _references(fake_gcp)
    lines: list[str] = []
    passwords = set()
    rng = random.Random(SEED)
    order = ["default", *[rng.choice([v for v in VARIANTS if v != "default"]) for _ in range(CYCLES - 2)], "default"]
    interrupted, fired = 0, 0
    for cycle, name in enumerate(order, 1):
        cfg = make_cfg(**VARIANTS[name])
        fake_gcp.clear_log()
        p = plan(cfg)
        assert fake_gcp.mutating_requests() == [], "plan never writes"
        assert not p.empty or cycle > 1 and name == order[cycle - 2]
        faults = [fake_gcp.fail_mutation(rng.randint(1, 3), status=s, after_apply=a)
                  for s, a in rng.sample(FAULTS, rng.randint(1, 2))]
        try:
            up(cfg, lines=lines)
        except MlflowGcpError as err:
            interrupted += 1
            lines.append(str(err))
        fired += sum(f.fired for f in faults)
        fake_gcp.clear_faults()
        let_google_finish(fake_gcp)
        up(cfg, lines=lines)  # the rerun
        passwords.add(user_password(fake_gcp))
        got = state(fake_gcp)
        assert got == refs[name], f"cycle {cycle} ({name}): {differences(got, refs[name])[:5]}"
        assert user_password(fake_gcp) in secret_payloads(fake_gcp), f"cycle {cycle}: password out of sync"
        fake_gcp.clear_log()
        assert plan(cfg).empty and fake_gcp.mutating_requests() == [], f"cycle {cycle} not converged"
    # The seed makes most cycles really break: the soak is not ten clean runs.
    assert interrupted >= CYCLES // 2 and fired >= interrupted
    # What the user saw (progress lines, error messages) and every log record, DEBUG included.
    said = "\n".join(lines) + caplog.text
    assert passwords and None not in passwords
    assert not [p for p in passwords if p in said]


@pytest.mark.parametrize("command", ["plan", "up"])
def test_a_public_config_is_refused_before_any_api_call(fake_gcp, tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    public = config.to_toml(make_cfg(access__mode="public"))
    (tmp_path / "mlflow-gcp.toml").write_text(public)
    args = [command, "--yes"] if command == "up" else [command]
    assert cli_main.main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert any("access.mode" in line for line in err) and any("--allow-public" in line for line in err)
    assert "Traceback" not in "\n".join(err)
    assert fake_gcp.requests == []
    # The same with the flag given on the command line instead of the file.
    (tmp_path / "mlflow-gcp.toml").write_text(config.to_toml(make_cfg()))
    assert cli_main.main([*args, "--set", "access.mode=public"]) != 0
    assert fake_gcp.requests == []
    assert cli_main.main([*args, "--set", "access.mode=public", "--allow-public"]) == 0
    assert fake_gcp.requests != []
