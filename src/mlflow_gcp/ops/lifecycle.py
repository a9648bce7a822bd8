"""`lifecycle show|set`: the artifact bucket's age rule, explained before it is applied.

The rule never deletes artifacts a registered model version points to: a delete rule needs a
prefix (config.LifecycleConfig refuses one over the whole bucket), and before setting one we ask
the MLflow server for every registered model version's source and refuse when one lies under the
prefix. When the server cannot be asked, the user is warned and must confirm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlflow_gcp import config as config_mod
from mlflow_gcp.errors import MlflowGcpError
from mlflow_gcp.gcp import storage
from mlflow_gcp.ops import live, status
from mlflow_gcp.plan import desired

# Registered model versions read per page from the MLflow API.
PAGE = 1000


class UnsafeRule(MlflowGcpError):
    """A delete rule would remove artifacts a registered model version uses."""


def new_config(cfg, days: int, action: str, prefix: str | None, storage_class: str | None):
    data = cfg.model_dump()
    lc = {"days": days, "action": action, "prefix": prefix}
    if storage_class:
        lc["storage_class"] = storage_class
    data["artifacts"]["lifecycle"] = lc
    return config_mod.from_dict(data)


def explain(cfg) -> list[str]:
    """What the rule will do, in sentences, before anything is applied."""
    lc = cfg.artifacts.lifecycle
    where = f"gs://{cfg.bucket_name}/{lc.prefix or ''}"
    lines = []
    if lc.action == "archive":
        lines.append(f"Objects under {where} older than {lc.days} days move to {lc.storage_class} storage: "
                     "nothing is deleted, reads of archived objects cost more and are slower to start.")
    else:
        lines.append(f"Objects under {where} older than {lc.days} days are DELETED (recoverable only during "
                     f"the bucket's {desired.SOFT_DELETE_SECONDS // 86400}-day soft-delete window).")
        lines.append("Registered model versions must not point there: checked below through the MLflow API.")
    user_prefix = lc.prefix
    for rule in desired.lifecycle_rules(cfg):
        prefixes = (rule.get("condition") or {}).get("matchesPrefix") or []
        if prefixes and user_prefix not in prefixes:
            lines.append(f"Kept as always: {status.describe_rule(rule)} (mlflow-gcp's own temporary files).")
    return lines


def show(ctx) -> dict:
    bucket = storage.get_bucket(ctx.clients, ctx.cfg.bucket_name)
    if bucket is None:
        raise MlflowGcpError(f"bucket {ctx.cfg.bucket_name} does not exist", hint=live.NOT_DEPLOYED_HINT)
    rules = (bucket.get("lifecycle") or {}).get("rule") or []
    return {"bucket": ctx.cfg.bucket_name, "rules": rules, "explained": [status.describe_rule(r) for r in rules]}


@dataclass
class ModelCheck:
    checked: bool
    message: str
    conflicts: list[str] = field(default_factory=list)


def model_sources(session_get, base: str) -> list[tuple[str, str]]:
    """(model/version, artifact URI) of every registered model version, sources resolved to
    gs:// where MLflow records them as runs:/ or models:/ URIs."""
    out = []
    token = None
    while True:
        params = {"max_results": PAGE}
        if token:
            params["page_token"] = token
        data = session_get(f"{base}/api/2.0/mlflow/model-versions/search", params)
        for mv in data.get("model_versions") or []:
            label = f"{mv.get('name')}/{mv.get('version')}"
            for uri in _resolve(session_get, base, mv):
                out.append((label, uri))
        token = data.get("next_page_token")
        if not token:
            return out


def _resolve(session_get, base: str, mv: dict) -> list[str]:
    uris = [u for u in (mv.get("source"), mv.get("storage_location")) if u]
    resolved = []
    for uri in uris:
        if uri.startswith("runs:/"):
            run_id, _, path = uri[len("runs:/"):].partition("/")
            info = session_get(f"{base}/api/2.0/mlflow/runs/get", {"run_id": run_id})
            root = ((info.get("run") or {}).get("info") or {}).get("artifact_uri") or ""
            resolved.append(f"{root.rstrip('/')}/{path}" if path else root)
        elif uri.startswith("models:/m-"):
            model_id = uri[len("models:/"):].split("/")[0]
            info = session_get(f"{base}/api/2.0/mlflow/logged-models/{model_id}", {})
            resolved.append(((info.get("model") or {}).get("info") or {}).get("artifact_location") or uri)
        else:
            resolved.append(uri)
    return resolved


def check_models(cfg, url: str | None) -> ModelCheck:
    """Ask the MLflow server (with an ID token) whether a model version lies under the prefix."""
    lc = cfg.artifacts.lifecycle
    if lc.action != "delete":
        return ModelCheck(True, "archive rules delete nothing")
    if not url:
        return ModelCheck(False, "the MLflow server's URL is unknown, so registered models were not checked")
    prefix_uri = f"{cfg.artifact_root}/{lc.prefix.lstrip('/')}"
    try:
        from mlflow_gcp.client import tokens

        token = tokens.resolve_source().fetch(url).value
    except Exception as err:  # noqa: BLE001 - any failure to mint means "cannot check"
        return ModelCheck(False, f"no ID token could be minted for {url} ({err.__class__.__name__}), so "
                                 "registered models were not checked")
    import requests

    from mlflow_gcp.client.auth import set_token

    session = requests.Session()
    set_token(session.headers, token)  # both headers, as the plugin sends them

    def get(u: str, params: dict) -> dict:
        resp = session.get(u, params=params, timeout=60)
        resp.raise_for_status()
        return resp.json()

    try:
        sources = model_sources(get, url.rstrip("/"))
    except (requests.RequestException, ValueError) as err:
        return ModelCheck(False, f"the MLflow server could not be asked ({err.__class__.__name__}), so "
                                 "registered models were not checked")
    mapped = [(label, _mapped(uri, cfg)) for label, uri in sources]
    conflicts = [f"{label} ({uri})" for label, uri in mapped if uri.startswith(prefix_uri)]
    if conflicts:
        return ModelCheck(True, f"{len(conflicts)} registered model version(s) use artifacts under {prefix_uri}",
                          conflicts)
    return ModelCheck(True, f"no registered model version (of {len({s[0] for s in sources})}) uses artifacts "
                            f"under {prefix_uri}")


def _mapped(uri: str, cfg) -> str:
    # A proxied server reports mlflow-artifacts:/ URIs: they live under the artifact root.
    if uri.startswith("mlflow-artifacts:/"):
        return f"{cfg.artifact_root}/{uri[len('mlflow-artifacts:/'):].lstrip('/')}"
    return uri


def apply(ctx, new_cfg, config_file=None) -> dict:
    """Patch the bucket's lifecycle with the new rule (and the build-source rule)."""
    rules = desired.lifecycle_rules(new_cfg)
    bucket = storage.get_bucket(ctx.clients, new_cfg.bucket_name)
    if bucket is None:
        raise MlflowGcpError(f"bucket {new_cfg.bucket_name} does not exist", hint=live.NOT_DEPLOYED_HINT)
    changed = ((bucket.get("lifecycle") or {}).get("rule") or []) != rules
    if changed:
        storage.patch_bucket(ctx.clients, new_cfg.bucket_name, {"lifecycle": {"rule": rules}})
    lc = new_cfg.artifacts.lifecycle
    saved = config_file is not None and live.save_settings(config_file, {
        ("artifacts", "lifecycle"): {k: v for k, v in lc.model_dump().items() if v is not None},
    })
    return {"changed": changed, "saved": bool(saved)}
