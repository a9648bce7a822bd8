"""Who may invoke the Cloud Run service: `access.members` hold roles/run.invoker, and a member
removed from `access.members` loses it at the next `up`. (A public server is not an allUsers
binding but the service's invokerIamDisabled, set by the Service step.)

`mlflow-gcp access grant` writes the same IAM policy, so the policy alone cannot tell which
members the config granted. The service carries that record: the annotation RECORD_ANNOTATION
holds the members `up` manages (a JSON list). `up` revokes exactly the recorded members that are
no longer in the config; a member never recorded (granted by `access grant`) is left alone, and
`access grant` takes a member out of the record (`release`) before granting it.

Order, so that an interruption anywhere converges on the next run and leaks nothing:
1. the record grows to (recorded + config) before any grant: nothing is granted unrecorded;
2. the policy is read, merged and written with its etag (grants and revocations at once);
3. the record shrinks to the config only after the revocations are written.
Each record write is a read-compare-write with the service's etag.
"""

from __future__ import annotations

import json

from mlflow_gcp.config import Config
from mlflow_gcp.errors import NotFound
from mlflow_gcp.gcp import iampolicy, run, runrevisions
from mlflow_gcp.gcp.errors import Aborted
from mlflow_gcp.plan import adopt, desired
from mlflow_gcp.plan.context import Step, ensure_bindings
from mlflow_gcp.plan.diff import Change
from mlflow_gcp.plan.model import CREATE, DELETE, NONE, UPDATE

# Kubernetes-style key (Cloud Run v2 rejects only the run.googleapis.com, cloud.googleapis.com,
# serving.knative.dev and autoscaling.knative.dev prefixes); labels cannot hold '@' or ':'.
RECORD_ANNOTATION = "mlflow-gcp/invokers"
ROLE = "roles/run.invoker"
# Re-reads after a concurrent change of the service before giving up.
_ETAG_ATTEMPTS = 3


def recorded(raw: dict | None) -> list[str]:
    """The members the record on the service names; none when absent or unreadable (so nothing
    is revoked on a guess)."""
    text = ((raw or {}).get("annotations") or {}).get(RECORD_ANNOTATION)
    if not text:
        return []
    try:
        members = json.loads(text)
    except ValueError:
        return []
    return [m for m in members if isinstance(m, str)] if isinstance(members, list) else []


def _annotations(raw: dict, members: set[str]) -> dict:
    out = dict(raw.get("annotations") or {})
    if members:
        out[RECORD_ANNOTATION] = json.dumps(sorted(members), separators=(",", ":"))
    else:
        out.pop(RECORD_ANNOTATION, None)
    return out


def write_record(clients, cfg: Config, change, progress=None) -> bool:
    """Set the record to change(recorded members); False when it already was (no write).

    The service is patched whole as read (v2 patch replaces what is not sent), with its etag so a
    concurrent change is re-read instead of overwritten; the template is unchanged, so no new
    revision rolls out."""
    for attempt in range(_ETAG_ATTEMPTS):
        raw = run.get_service_raw(clients, cfg.region, cfg.service.name)
        if raw is None:
            return False
        have = set(recorded(raw))
        want = set(change(have))
        if want == have:
            return False
        body = runrevisions.input_body(raw)
        body["annotations"] = _annotations(raw, want)
        if raw.get("etag"):
            body["etag"] = raw["etag"]
        try:
            runrevisions.patch_service(clients, cfg.region, cfg.service.name, body, progress=progress)
        except Aborted:
            if attempt == _ETAG_ATTEMPTS - 1:
                raise
            continue
        return True
    return False


def release(clients, cfg: Config, members: list[str]) -> bool:
    """Members granted by hand from now on: out of the record, so `up` never revokes them (a
    member still in access.members stays managed by the config)."""
    gone = set(members) - set(cfg.access.members)
    if not gone:
        return False
    return write_record(clients, cfg, lambda have: have - gone)


class Invokers(Step):
    key, kind = "invokers", "IAM binding"

    def name(self, ctx):
        return f"service {ctx.cfg.service.name} (invokers)"

    def _policy(self, ctx) -> dict:
        try:
            return run.get_service_iam_policy(ctx.clients, ctx.cfg.region, ctx.cfg.service.name)
        except NotFound:
            return {}

    def _bindings(self, ctx, record: list[str]) -> tuple[list, list, list[str]]:
        want, unwanted = desired.invoker_bindings(ctx.cfg)
        dropped = [m for m in record if m not in ctx.cfg.access.members]
        return want, unwanted + [(ROLE, m) for m in dropped], dropped

    def inspect(self, ctx):
        raw = run.get_service_raw(ctx.clients, ctx.cfg.region, ctx.cfg.service.name)
        record = recorded(raw)
        want, unwanted, dropped = self._bindings(ctx, record)
        policy = self._policy(ctx)
        add = iampolicy.missing(policy, want)
        remove = iampolicy.present(policy, unwanted)
        stale_record = set(record) != set(ctx.cfg.access.members)
        if not add and not remove and not stale_record:
            return self.action(ctx, NONE)
        changes = [Change(r, None, m) for r, m in add] + [Change(r, m, None) for r, m in remove]
        why = {m: " (no longer in access.members)" for m in dropped}
        detail = [f"grant {r} to {m}" for r, m in add]
        detail += [f"remove {r} from {m}{why.get(m, '')}" for r, m in remove]
        if not detail:
            detail = [f"record the members access.members grants (annotation {RECORD_ANNOTATION})"]
        verb = UPDATE if not changes or (add and remove) else (CREATE if add else DELETE)
        public = [m for _, m in remove if m in desired.PUBLIC_MEMBERS]
        notes = [adopt.public_removal_note(ctx.cfg, public)] if public else []
        return self.action(ctx, verb, changes=changes, detail="; ".join(detail), notes=notes)

    def apply(self, ctx, action):
        cfg, members = ctx.cfg, set(ctx.cfg.access.members)
        write_record(ctx.clients, cfg, lambda have: have | members, progress=ctx.progress)
        raw = run.get_service_raw(ctx.clients, cfg.region, cfg.service.name)
        want, unwanted, _ = self._bindings(ctx, recorded(raw))
        ensure_bindings(
            ctx, lambda: self._policy(ctx),
            lambda p: run.set_service_iam_policy(ctx.clients, cfg.region, cfg.service.name, p),
            want, unwanted,
        )
        write_record(ctx.clients, cfg, lambda have: members, progress=ctx.progress)
