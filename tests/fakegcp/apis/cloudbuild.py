"""Placeholder: filled in shortly."""

from ..core.api import ApiModule


class CloudBuild(ApiModule):
    name = "cloudbuild"
    versions = ("v2",) if "cloudbuild" == "logging" else ("v1",)
    service = "cloudbuild.googleapis.com"
    title = "cloudbuild"

    def reset(self) -> None:
        self.state = {}
