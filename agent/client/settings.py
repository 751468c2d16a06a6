"""Settings of the hub link: the ``[connect]`` table, owned by the client.

In TOML::

    [connect]
    url = "wss://hub.home.arpa:8443/ws"      # or a list: the nodes of a hub cluster
    token_file = "/etc/edge-agent/token"     # mode 0600; `token = "..."` also works

No ``url`` runs an embedded hub. The model is standalone, so ``agent.config.Settings`` can
hold it as ``connect: ConnectSettings`` without loading the client itself.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, SecretStr, field_validator

from agent.setting_types import WS_SCHEMES, OptionalUserPath, Section, blank_is_none, check_url

__all__ = ["ConnectSettings"]


class ConnectSettings(Section):
    """The hub this agent connects to ([connect]); no ``url`` runs an embedded hub.

    ``url`` is one hub URL or a list of the URLs of several hub nodes (from the environment:
    the URLs separated by commas or spaces); the agent moves to the next when one fails.
    """

    url: Annotated[str | list[str] | None, BeforeValidator(blank_is_none)] = None
    token: SecretStr | None = None
    token_file: OptionalUserPath = None

    @field_validator("url", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str) and len(found := value.replace(",", " ").split()) > 1:
            return found
        return value

    @field_validator("url")
    @classmethod
    def _ws_url(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            if not value:
                raise ValueError("give at least one hub URL (or none to run an embedded hub)")
            return [check_url(url, WS_SCHEMES) for url in value]
        return None if value is None else check_url(value, WS_SCHEMES)

    @property
    def urls(self) -> list[str]:
        """The hub URLs in the order to try them (empty: run an embedded hub)."""
        if self.url is None:
            return []
        return [self.url] if isinstance(self.url, str) else list(self.url)
