"""Fault injection and the request log."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

from .errors import GcpError

# Discovery verbs that read even though some APIs send them as POST.
READ_VERBS = {"get", "list", "batchGet", "getIamPolicy", "testIamPermissions", "access", "tail",
              "generateAccessToken", "generateIdToken", "signBlob", "signJwt", "aggregatedList",
              "search", "listServerCas", "getLatestRecoveryTime"}


@dataclass
class RecordedRequest:
    method: str
    api: str
    path: str  # relative to the API root, e.g. "v1/projects/p/instances" (percent-decoded)
    query: dict
    body: object
    status: int = 0
    method_id: str | None = None
    version: str | None = None
    mutating: bool = False
    injected: bool = False  # answered by an injected fault

    def __str__(self) -> str:
        return f"{self.method} /{self.api}/{self.path} -> {self.status}"


@dataclass
class Fault:
    status: int
    at_call: int = 1
    times: int = 1
    method: str | None = None
    path_regex: str | None = None
    api: str | None = None
    method_id: str | None = None
    mutating_only: bool = False
    message: str | None = None
    reason: str | None = None
    grpc_status: str | None = None
    after_apply: bool = False  # run the handler (state changes) and then answer with the error
    details: list = field(default_factory=list)  # error.details, e.g. an ErrorInfo
    seen: int = 0
    fired: int = 0

    def matches(self, rec: RecordedRequest) -> bool:
        if self.mutating_only and not rec.mutating:
            return False
        if self.method and self.method.upper() != rec.method:
            return False
        if self.api and self.api != rec.api:
            return False
        if self.method_id and self.method_id != rec.method_id:
            return False
        if self.path_regex and not re.search(self.path_regex, rec.path):
            return False
        return True

    def error(self) -> GcpError:
        message = self.message or f"Injected fault: HTTP {self.status}."
        return GcpError(self.status, message, self.grpc_status, self.reason, list(self.details))


@dataclass
class Latency:
    seconds: float
    api: str | None = None
    path_regex: str | None = None
    method: str | None = None


@dataclass
class Faults:
    rules: list[Fault] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    operation_failures: dict = field(default_factory=dict)  # api or None -> [GcpError]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.latencies.clear()
            self.operation_failures.clear()

    def check(self, rec: RecordedRequest) -> Fault | None:
        """The fault that answers this request, if any (counts matching calls)."""
        with self.lock:
            hit = None
            for rule in self.rules:
                if not rule.matches(rec):
                    continue
                rule.seen += 1
                if hit is None and rule.at_call <= rule.seen < rule.at_call + rule.times:
                    rule.fired += 1
                    hit = rule
            return hit

    def delay(self, rec: RecordedRequest) -> float:
        total = 0.0
        for lat in self.latencies:
            if lat.api and lat.api != rec.api:
                continue
            if lat.method and lat.method.upper() != rec.method:
                continue
            if lat.path_regex and not re.search(lat.path_regex, rec.path):
                continue
            total += lat.seconds
        return total
