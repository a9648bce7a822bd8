"""Who may use `mlflow-gcp ui`'s proxy: the user's own browser tabs, and nobody else.

The proxy adds the user's ID token to whatever it forwards, so any request it accepts acts as
the user. A web page can make the browser send requests to 127.0.0.1 (forms, `fetch` in
`no-cors` mode, navigations) and can rebind its own DNS name to 127.0.0.1; other programs on the
machine can connect to the port. Three checks, each enough against the attack it names:

1. **Host** must be the proxy's own loopback address or `localhost`, with its port: a DNS-rebinding
   page sends its own name.
2. **Cross-site requests are refused**: an `Origin` that is not the proxy's own, and
   `Sec-Fetch-Site: cross-site` or `same-site` (a page on another localhost port is same-site),
   except top-level GET navigations, which cannot read the answer.
3. **A per-session secret**, as Jupyter does: `GET /...?token=SECRET` sets an HttpOnly,
   SameSite=Strict cookie; every other request needs that cookie. The login answer is a page that
   moves on to the clean URL by script rather than a 302: a navigation that started on another
   site (a notebook's link, the file the CLI opens) would not carry a Strict cookie through a
   redirect, while a navigation started by our own page does.

Everything here is pure (headers in, verdict out), so it is tested without sockets.
"""

from __future__ import annotations

import hmac
import html
import json
import re
import secrets
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

TOKEN_PARAM = "token"
# Browsers keep cookies per host, not per port: one name per port keeps two proxies apart.
COOKIE_PREFIX = "mlflow-gcp-ui-"
# The browser's side of the conversation, which the service never gets: it authenticates the
# proxy by its ID token alone; a local Origin would ask its CORS guard to trust a localhost page;
# a Referer can hold the local address or the secret; Cookie holds our session and those of other
# apps on localhost (browsers do not separate cookies by port).
BROWSER_ONLY_HEADERS = {"origin", "referer", "cookie"}

NO_SESSION = (
    "mlflow-gcp ui: this browser has no session: open the address ending in ?token=... that "
    "`mlflow-gcp ui` printed in its terminal"
)
WRONG_TOKEN = (
    "mlflow-gcp ui: wrong token: open the address ending in ?token=... that `mlflow-gcp ui` "
    "printed in its terminal (each run has its own)"
)
_TOKEN_IN_TEXT = re.compile(r"(?i)([?&]token=)[^&\s\"']*")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def redact(text: str) -> str:
    """`text` with the value of any token= parameter replaced (for request lines in logs)."""
    return _TOKEN_IN_TEXT.sub(r"\1***", text)


@dataclass(frozen=True)
class Login:
    """A correct `?token=`: set the cookie and go on to `location` (the URL without it)."""

    cookie: str
    location: str

    def page(self) -> bytes:
        # location.replace keeps the #fragment (the UI's route) and leaves no history entry
        # with the secret; the meta refresh covers a browser without scripts.
        target = html.escape(self.location, quote=True)
        script = json.dumps(self.location).replace("<", "\\u003c")
        return (
            "<!doctype html><meta charset=utf-8><title>mlflow-gcp ui</title>"
            f'<meta http-equiv="refresh" content="0;url={target}">'
            f"<script>location.replace({script} + location.hash)</script>"
            f'<a href="{target}">Continue to the MLflow UI</a>\n'
        ).encode()


class Guard:
    """The checks for one proxy listening on `bind`:`port` with session secret `token`."""

    def __init__(self, bind: str, port: int, token: str):
        literal = f"[{bind}]" if ":" in bind else bind
        names = {literal.lower(), "localhost"}
        self.hosts = {f"{name}:{port}" for name in names}
        if port == 80:  # browsers leave the default port out of Host and Origin
            self.hosts |= names
        self.token = token
        self.cookie_name = f"{COOKIE_PREFIX}{port}"

    def refusal(self, method: str, headers: Mapping[str, str]) -> str | None:
        """Why this request is refused (one line for the 403 body), or None to go on."""
        host = (headers.get("Host") or "").strip().lower()
        if host not in self.hosts:
            return (f"mlflow-gcp ui: refused Host {host or '(none)'!r}: open the proxy as "
                    f"{' or '.join(sorted('http://' + h for h in self.hosts))}")
        origin = headers.get("Origin")
        if origin is not None and origin.lower() != f"http://{host}":
            return f"mlflow-gcp ui: refused a cross-origin request from {origin!r}"
        site = (headers.get("Sec-Fetch-Site") or "").lower()
        if site in ("cross-site", "same-site") and not _top_level_navigation(method, headers):
            return (f"mlflow-gcp ui: refused a {site} request "
                    "(only this proxy's own pages may call it)")
        return None

    def login(self, method: str, path: str) -> Login | str | None:
        """A `?token=` request: the Login, or why it is refused; None when it carries none."""
        parts = urllib.parse.urlsplit(path)
        params = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        given = [value for key, value in params if key == TOKEN_PARAM]
        if method != "GET" or not given:
            return None
        if not all(hmac.compare_digest(value.encode(), self.token.encode()) for value in given):
            return WRONG_TOKEN
        rest = urllib.parse.urlencode([(k, v) for k, v in params if k != TOKEN_PARAM])
        location = urllib.parse.urlunsplit(("", "", parts.path or "/", rest, ""))
        cookie = f"{self.cookie_name}={self.token}; Path=/; HttpOnly; SameSite=Strict"
        return Login(cookie, location)

    def has_session(self, headers: Mapping[str, str]) -> bool:
        """The session cookie, or the secret as `Authorization: Bearer`: what a script sends
        (MLflow's client with MLFLOW_TRACKING_TOKEN); a page cannot set that header on a
        cross-origin request without a preflight, which `refusal` refuses."""
        return any(hmac.compare_digest(given.encode(), self.token.encode())
                   for given in self._given(headers))

    def session_refusal(self, headers: Mapping[str, str]) -> str:
        return WRONG_TOKEN if self._given(headers) else NO_SESSION

    def _given(self, headers: Mapping[str, str]) -> list[str]:
        found = []
        scheme, _, value = (headers.get("Authorization") or "").strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            found.append(value.strip())
        if (cookie := cookies(headers.get("Cookie", "")).get(self.cookie_name)) is not None:
            found.append(cookie)
        return found


def cookies(header: str) -> dict[str, str]:
    """Name -> value from a Cookie header (lenient: other local apps' cookies may be odd)."""
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            out.setdefault(name.strip(), value.strip())
    return out


def _top_level_navigation(method: str, headers: Mapping[str, str]) -> bool:
    return (
        method == "GET"
        and (headers.get("Sec-Fetch-Mode") or "").lower() == "navigate"
        and (headers.get("Sec-Fetch-Dest") or "document").lower() == "document"
    )
