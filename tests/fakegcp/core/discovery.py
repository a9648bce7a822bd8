"""Routes and request validation driven by the discovery documents bundled with googleapiclient.

A request is matched to a discovery method by HTTP method and path (servicePath + method path,
with `{+name}` expanded to the parameter's pattern and `{name}` to one path segment); its path and
query parameters are checked, and its JSON body is checked recursively against the method's
request schema: an unknown field anywhere, a wrong basic type or an unknown enum value is a 400
INVALID_ARGUMENT that names the field, as Google's front end does.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import googleapiclient

from .errors import invalid_argument

DOCUMENTS = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents"

# Query parameters every Google API accepts (discovery's top-level "parameters") plus what
# transports add on their own.
_TRANSPORT_PARAMS = {"alt", "prettyPrint", "fields", "key", "quotaUser", "userIp", "$.xgafv",
                     "access_token", "callback", "oauth_token", "upload_protocol", "uploadType"}

_TOKEN = re.compile(r"\{(\+?)([^}]+)\}")


@dataclass
class Route:
    api: str
    version: str
    method_id: str
    http_method: str
    template: str
    regex: re.Pattern
    param_names: list[str]
    parameters: dict
    request_ref: str | None
    literal_len: int
    doc: dict = field(repr=False)

    @property
    def verb(self) -> str:
        return self.method_id.rsplit(".", 1)[-1]


def _compile(template: str, parameters: dict) -> tuple[re.Pattern, list[str], int]:
    parts, names, pos, literal = [], [], 0, 0
    for m in _TOKEN.finditer(template):
        lit = template[pos:m.start()]
        parts.append(re.escape(lit))
        literal += len(lit)
        reserved, name = m.group(1), m.group(2)
        if reserved:
            pat = parameters.get(name, {}).get("pattern", "^.+$")
            pat = pat.removeprefix("^").removesuffix("$")
            parts.append(f"(?P<p{len(names)}>{pat})")
        else:
            parts.append(f"(?P<p{len(names)}>[^/]+)")
        names.append(name)
        pos = m.end()
    lit = template[pos:]
    parts.append(re.escape(lit))
    literal += len(lit)
    return re.compile("".join(parts) + r"\Z"), names, literal


def _walk(resource: dict):
    yield from resource.get("methods", {}).values()
    for sub in resource.get("resources", {}).values():
        yield from _walk(sub)


@functools.lru_cache(maxsize=None)
def load(api: str, version: str) -> dict:
    return json.loads((DOCUMENTS / f"{api}.{version}.json").read_text())


@functools.lru_cache(maxsize=None)
def routes(api: str, version: str) -> tuple[Route, ...]:
    doc = load(api, version)
    out = []
    for m in _walk(doc):
        template = doc["servicePath"] + m["path"]
        params = m.get("parameters", {})
        regex, names, literal = _compile(template, params)
        ref = (m.get("request") or {}).get("$ref")
        out.append(Route(api, version, m["id"], m["httpMethod"], template, regex, names, params,
                         ref, literal, doc))
        upload = (m.get("mediaUpload") or {}).get("protocols", {}).get("simple", {}).get("path")
        if upload:
            # Upload paths are absolute ("/upload/storage/v1/b/{bucket}/o").
            regex, names, literal = _compile(upload.lstrip("/"), params)
            out.append(Route(api, version, m["id"], m["httpMethod"], upload, regex, names, params,
                             ref, literal, doc))
    return tuple(out)


def match(api: str, versions: list[str], http_method: str, raw_path: str):
    """Best route for a request path (percent-encoded, relative to the API root) or None."""
    best = None
    best_params = None
    for version in versions:
        for route in routes(api, version):
            if route.http_method != http_method:
                continue
            m = route.regex.match(raw_path)
            if not m:
                continue
            # The template with the most literal text is the most specific (":access" beats a
            # version id that happens to contain a colon).
            if best is None or route.literal_len > best.literal_len:
                best = route
                best_params = {n: unquote(m.group(f"p{i}")) for i, n in enumerate(route.param_names)}
    return best, best_params


def path_exists(api: str, versions: list[str], raw_path: str) -> bool:
    return any(r.regex.match(raw_path) for v in versions for r in routes(api, v))


def check_query(route: Route, query: dict[str, list[str]], path_params: dict) -> dict:
    """Validate query parameters; return them flattened (repeated ones stay lists)."""
    out: dict = {}
    doc_params = route.doc.get("parameters", {})
    for name, values in query.items():
        spec = route.parameters.get(name) or doc_params.get(name)
        if spec is None:
            if name in _TRANSPORT_PARAMS:
                continue
            raise invalid_argument(
                f"Invalid JSON payload received. Unknown name \"{name}\": Cannot bind query "
                "parameter. Field '{name}' could not be found in request message.".replace("{name}", name),
                field=name,
            )
        if spec.get("type") == "boolean":
            # Google's front end parses booleans in query strings case-insensitively: `gcloud
            # storage` sends "True"/"False" (Python's str(bool)). Handlers see "true"/"false".
            values = [v.lower() if v.lower() in ("true", "false") else v for v in values]
        for v in values:
            _check_scalar(v, spec, name, from_query=True)
        out[name] = values if spec.get("repeated") else values[-1]
    for name, spec in route.parameters.items():
        if spec.get("required") and name not in out and name not in path_params:
            raise invalid_argument(f"Required parameter '{name}' is missing.", field=name)
    return out


def _type_name(schema: dict) -> str:
    fmt = schema.get("format")
    t = schema.get("type", "object")
    return {"string": "TYPE_STRING", "integer": "TYPE_INT32", "number": "TYPE_DOUBLE",
            "boolean": "TYPE_BOOL"}.get(t, t.upper()) if fmt not in ("int64", "uint64") else "TYPE_INT64"


def _bad_value(path: str, schema: dict, value) -> Exception:
    return invalid_argument(
        f"Invalid value at '{path}' ({_type_name(schema)}), {json.dumps(value)}", field=path
    )


_DURATION = re.compile(r"-?\d+(\.\d{1,9})?s")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")
# Proto JSON forms Google's front end parses strictly ("300" is not a Duration, "300s" is).
_FORMAT_CHECKS = {
    "google-duration": lambda v: _DURATION.fullmatch(v) is not None,
    "google-datetime": lambda v: _DATETIME.fullmatch(v) is not None,
    "byte": lambda v: _BASE64.fullmatch(v) is not None and len(v.rstrip("=")) % 4 != 1,
}


def _is_int_string(v) -> bool:
    return isinstance(v, str) and re.fullmatch(r"-?\d+", v) is not None


def _check_scalar(value, schema: dict, path: str, from_query: bool = False) -> None:
    t = schema.get("type")
    fmt = schema.get("format")
    if t == "string":
        if fmt in ("int64", "uint64", "int32", "uint32"):
            ok = _is_int_string(value) or (isinstance(value, int) and not isinstance(value, bool))
        else:
            ok = isinstance(value, str) and _FORMAT_CHECKS.get(fmt, lambda v: True)(value)
        if not ok:
            raise _bad_value(path, schema, value)
        enum = schema.get("enum")
        if enum and value not in enum:
            raise _bad_value(path, schema, value)
    elif t == "integer":
        if not ((isinstance(value, int) and not isinstance(value, bool)) or _is_int_string(value)):
            raise _bad_value(path, schema, value)
    elif t == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if from_query or isinstance(value, str):
            try:
                float(value)
                ok = True
            except (TypeError, ValueError):
                ok = False
        if not ok:
            raise _bad_value(path, schema, value)
    elif t == "boolean":
        ok = isinstance(value, bool) or (from_query and value in ("true", "false"))
        if not ok:
            raise _bad_value(path, schema, value)


def check_body(route: Route, body) -> None:
    if route.request_ref is None:
        if body not in (None, {}):
            raise invalid_argument("Invalid JSON payload received. This method takes no body.")
        return
    if body is None:
        return
    _check_value(body, {"$ref": route.request_ref}, route.doc["schemas"], "")


def _check_value(value, schema: dict, schemas: dict, path: str) -> None:
    if value is None:
        return  # JSON null clears a field; Google accepts it everywhere.
    ref = schema.get("$ref")
    if ref:
        schema = schemas[ref]
    t = schema.get("type", "object" if "properties" in schema else "any")
    if t == "any":
        return
    if t == "object":
        if not isinstance(value, dict):
            raise _bad_value(path or "body", {"type": "object"}, value)
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            child = f"{path}.{key}" if path else key
            if props is not None and key in props:
                _check_value(sub, props[key], schemas, child)
            elif extra is not None:
                _check_value(sub, extra, schemas, child)
            else:
                where = f" at '{path}'" if path else ""
                raise invalid_argument(
                    f"Invalid JSON payload received. Unknown name \"{key}\"{where}: Cannot find field.",
                    field=child,
                )
        return
    if t == "array":
        if not isinstance(value, list):
            raise _bad_value(path, {"type": "array"}, value)
        for i, item in enumerate(value):
            _check_value(item, schema.get("items", {}), schemas, f"{path}[{i}]")
        return
    _check_scalar(value, schema, path)
