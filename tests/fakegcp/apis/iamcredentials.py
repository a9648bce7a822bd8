"""Placeholder: filled in shortly."""

from ..core.api import ApiModule


class IamCredentials(ApiModule):
    name = "iamcredentials"
    versions = ("v2",) if "iamcredentials" == "logging" else ("v1",)
    service = "iamcredentials.googleapis.com"
    title = "iamcredentials"

    def reset(self) -> None:
        self.state = {}
