"""One exception hierarchy for the whole product.

The CLI catches only `MlflowGcpError`, prints `str(err)` on one line and exits with `exit_code`;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MlflowGcpError(Exception):
    """Base of every error this product raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class ConfigError(MlflowGcpError):
    """The configuration (file, environment or flags) is invalid; nothing was called yet."""

    exit_code = 2

    def __init__(self, problems: list[tuple[str, str]] | str, *, hint: str | None = None):
        if isinstance(problems, str):
            problems = [("config", problems)]
        self.problems = problems
        lines = "; ".join(f"{field}: {msg}" for field, msg in problems)
        super().__init__(lines, hint=hint)

    def lines(self) -> list[str]:
        return [f"{field}: {msg}" for field, msg in self.problems]


class BudgetError(ConfigError):
    """The deployment would open more database connections than the tier allows."""


class ServerEnvError(MlflowGcpError):
    """The server container's environment is missing or malformed (one variable per error)."""

    exit_code = 2


class DatabaseUnavailable(MlflowGcpError):
    """The database could not be reached within the retry budget."""

    exit_code = 3


class UserAborted(MlflowGcpError):
    """The user declined a confirmation prompt."""

    exit_code = 4


class GcpError(MlflowGcpError):
    """A Google Cloud API call failed; subclasses say how."""

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None):
        super().__init__(message, hint=hint)
        self.status = status


class NotFound(GcpError):
    pass


class AlreadyExists(GcpError):
    pass


class PermissionDenied(GcpError):
    pass


class ApiDisabled(GcpError):
    pass


class RateLimited(GcpError):
    pass


class Unavailable(GcpError):
    pass


class OperationFailed(GcpError):
    """A long-running operation finished with an error or ran out of time."""


class OrgPolicyDenied(GcpError):
    """An organization policy forbids the call (400/412 FAILED_PRECONDITION naming a constraint);
    `constraint` is its name, e.g. iam.allowedPolicyMemberDomains. No retry or role helps."""

    constraint: str = ""


class Conflict(GcpError):
    """An existing resource with our name differs from what we would create."""
