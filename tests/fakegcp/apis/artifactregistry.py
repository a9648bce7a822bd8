"""Placeholder: filled in shortly."""

from ..core.api import ApiModule


class ArtifactRegistry(ApiModule):
    name = "artifactregistry"
    versions = ("v2",) if "artifactregistry" == "logging" else ("v1",)
    service = "artifactregistry.googleapis.com"
    title = "artifactregistry"

    def reset(self) -> None:
        self.state = {}
