"""Placeholder: filled in shortly."""

from ..core.api import ApiModule


class CloudScheduler(ApiModule):
    name = "cloudscheduler"
    versions = ("v2",) if "cloudscheduler" == "logging" else ("v1",)
    service = "cloudscheduler.googleapis.com"
    title = "cloudscheduler"

    def reset(self) -> None:
        self.state = {}
