"""Google's JSON error shape, so google-api-python-client raises HttpError with real content.

Every error the fake returns goes through GcpError.body(): {"error": {code, message, status,
errors: [...], details: [...]}}, the shape of googleapis.com's JSON errors.
"""

from __future__ import annotations

# The canonical gRPC status name Google puts in error.status for each HTTP code.
STATUS_FOR_CODE = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

# The legacy errors[].reason Google sends for each HTTP code.
REASON_FOR_CODE = {
    400: "badRequest",
    401: "authError",
    403: "forbidden",
    404: "notFound",
    409: "conflict",
    412: "conditionNotMet",
    429: "rateLimitExceeded",
    500: "backendError",
    501: "notImplemented",
    503: "backendError",
    504: "deadlineExceeded",
}


class GcpError(Exception):
    """An error response; raise it from a handler to answer with Google's error JSON."""

    def __init__(
        self,
        code: int,
        message: str,
        status: str | None = None,
        reason: str | None = None,
        details: list[dict] | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_FOR_CODE.get(code, "UNKNOWN")
        self.reason = reason or REASON_FOR_CODE.get(code, "error")
        self.details = details or []
        self.domain = "global"

    def body(self) -> dict:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "status": self.status,
                "errors": [{"message": self.message, "domain": self.domain, "reason": self.reason}],
                "details": self.details,
            }
        }


def invalid_argument(message: str, field: str | None = None) -> GcpError:
    details = []
    if field is not None:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": message}],
            }
        )
    return GcpError(400, message, "INVALID_ARGUMENT", "invalid", details)


def failed_precondition(message: str, code: int = 400) -> GcpError:
    return GcpError(code, message, "FAILED_PRECONDITION", "failedPrecondition")


def org_policy_violation(message: str, constraint: str, description: str, subject: str) -> GcpError:
    """400 FAILED_PRECONDITION with the PreconditionFailure detail naming the constraint, as
    Google answers a call an organization policy forbids."""
    return GcpError(400, message, "FAILED_PRECONDITION", "failedPrecondition", [{
        "@type": "type.googleapis.com/google.rpc.PreconditionFailure",
        "violations": [{"type": f"constraints/{constraint}", "subject": subject, "description": description}],
    }])


def not_found(what: str) -> GcpError:
    return GcpError(404, f"{what} not found.", "NOT_FOUND", "notFound")


def already_exists(what: str) -> GcpError:
    return GcpError(409, f"{what} already exists.", "ALREADY_EXISTS", "alreadyExists")


def aborted(message: str) -> GcpError:
    return GcpError(409, message, "ABORTED", "aborted")


def service_disabled(service: str, title: str, project_number: str) -> GcpError:
    """The 403 Google returns when the API is not enabled in the consumer project."""
    url = f"https://console.developers.google.com/apis/api/{service}/overview?project={project_number}"
    message = (
        f"{title} has not been used in project {project_number} before or it is disabled. "
        f"Enable it by visiting {url} then retry. If you enabled this API recently, wait a few "
        "minutes for the action to propagate to our systems and retry."
    )
    err = GcpError(403, message, "PERMISSION_DENIED", "accessNotConfigured")
    err.domain = "usageLimits"
    err.details = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "SERVICE_DISABLED",
            "domain": "googleapis.com",
            "metadata": {
                "service": service,
                "consumer": f"projects/{project_number}",
                "serviceTitle": title,
                "activationUrl": url,
                "containerInfo": project_number,
            },
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [{"description": "Google developers console API activation", "url": url}],
        },
    ]
    return err
