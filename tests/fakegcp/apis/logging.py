"""Placeholder: filled in shortly."""

from ..core.api import ApiModule


class Logging(ApiModule):
    name = "logging"
    versions = ("v2",) if "logging" == "logging" else ("v1",)
    service = "logging.googleapis.com"
    title = "logging"

    def reset(self) -> None:
        self.state = {}
