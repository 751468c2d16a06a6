"""Settings of web push: the ``[push]`` table (hub side) and ``[push.outbox]`` (agent side).

In TOML::

    [push]
    subject = "mailto:ops@example.com"   # the VAPID "sub" claim (RFC 8292 section 2.1)
    default_ttl_seconds = 86400           # TTL of an alert that does not set its own
    # Which accounts a device may alert: names, or "role:NAME"; "*" is every device.
    device_recipients = { "*" = ["role:admin", "role:user"], "gate" = ["alice"] }

    retry_cap_seconds = 60                # longest wait between two attempts of a delivery
    max_queued = 100000                   # deliveries on disk; beyond, sends are refused (429)

    [push.outbox]
    max_rows = 1000                       # the oldest pending alert is dropped beyond this
    max_queued_posts = 1000               # event posts kept while the hub link is down

The model is standalone so ``agent.config.Settings`` can hold it as ``push: PushSettings``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "MAX_TTL_SECONDS",
    "ROLE_PREFIX",
    "OutboxSettings",
    "PushSettings",
]

# The longest TTL an alert may ask for: 28 days, what the push services keep at most.
MAX_TTL_SECONDS: Final = 28 * 24 * 3600
ROLE_PREFIX: Final = "role:"
_ROLES: Final = ("admin", "user", "device")
# RFC 8292 section 2.1: a mailto: address or an https: URL; py_vapid further wants a
# domain with a dot (or localhost) and an https URL without a path.
_SUBJECT_RE: Final = re.compile(
    r"^(mailto:[^@\s]+@(localhost|[\w%-]+(\.[\w%-]+)+)|https://(localhost|[\w-]+\.[\w.-]+))$"
)
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class OutboxSettings(BaseModel):
    """The agent's durable alert outbox ([push.outbox])."""

    model_config = ConfigDict(extra="forbid")

    max_rows: int = Field(default=1000, gt=0, le=1_000_000)
    # Event posts kept (on disk, in order) while the hub link is down; the oldest go first.
    max_queued_posts: int = Field(default=1000, gt=0, le=1_000_000)
    # Retry delays of an alert the hub did not take: full jitter below a doubling ceiling.
    retry_initial_seconds: float = Field(default=1.0, gt=0)
    retry_cap_seconds: float = Field(default=60.0, gt=0)
    # Seconds one delivery to the hub may take before it counts as failed.
    timeout_seconds: float = Field(default=15.0, gt=0)

    @model_validator(mode="after")
    def _cap_above_initial(self) -> OutboxSettings:
        if self.retry_cap_seconds < self.retry_initial_seconds:
            raise ValueError("retry_cap_seconds must be >= retry_initial_seconds")
        return self


class PushSettings(BaseModel):
    """Web push: VAPID subject, delivery policy, subscription and recipient rules ([push])."""

    model_config = ConfigDict(extra="forbid")

    subject: str = "mailto:admin@localhost"
    default_ttl_seconds: int = Field(default=86400, ge=0, le=MAX_TTL_SECONDS)
    # Seconds one request to a push service may take (connect, send, answer).
    timeout_seconds: float = Field(default=10.0, gt=0)
    # Attempts per subscription before a delivery is given up; unset: until the push
    # service takes it, refuses it for good, or the message's TTL runs out.
    max_attempts: int | None = Field(default=None, ge=1)
    # Waits between attempts: full jitter below a ceiling doubling from initial to cap,
    # or what Retry-After asks on 429 and 503.
    retry_initial_seconds: float = Field(default=1.0, gt=0)
    retry_cap_seconds: float = Field(default=60.0, gt=0)
    # Deliveries waiting on disk; a send that would go beyond is refused (429, retried
    # by the agent's outbox).
    max_queued: int = Field(default=100_000, ge=1)
    # Requests in flight to push services at once, across every recipient.
    max_concurrent: int = Field(default=32, ge=1, le=1024)
    max_subscriptions_per_user: int = Field(default=10, ge=1, le=1000)
    # Alert ids remembered to drop a resent alert (an agent resends when an answer was lost).
    dedup_seconds: int = Field(default=MAX_TTL_SECONDS, ge=60)
    # Only for tests and closed networks: endpoints on loopback, private or link-local hosts.
    allow_private_endpoints: bool = False
    # A PEM bundle trusted for push services besides the system's (a test's own CA).
    ca_file: Path | None = None
    device_recipients: dict[str, list[str]] = Field(
        default_factory=lambda: {"*": [ROLE_PREFIX + "admin", ROLE_PREFIX + "user"]}
    )
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)

    @field_validator("subject")
    @classmethod
    def _vapid_subject(cls, value: str) -> str:
        if not _SUBJECT_RE.match(value):
            raise ValueError(
                f"{value!r} is not a VAPID subject: use mailto:someone@example.com "
                "or an https:// URL (RFC 8292 section 2.1)"
            )
        return value

    @field_validator("device_recipients")
    @classmethod
    def _recipient_entries(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for device, entries in value.items():
            if device != "*" and not _NAME_RE.match(device):
                raise ValueError(f"{device!r} is not an account name (or '*')")
            for entry in entries:
                _check_recipient_entry(device, entry)
        return value

    @model_validator(mode="after")
    def _cap_above_initial(self) -> PushSettings:
        if self.retry_cap_seconds < self.retry_initial_seconds:
            raise ValueError("retry_cap_seconds must be >= retry_initial_seconds")
        return self


def _check_recipient_entry(device: str, entry: str) -> None:
    if entry.startswith(ROLE_PREFIX):
        if entry.removeprefix(ROLE_PREFIX) not in _ROLES:
            raise ValueError(
                f"device_recipients[{device!r}]: {entry!r} names no role; "
                f"use one of {', '.join(ROLE_PREFIX + r for r in _ROLES)}"
            )
    elif not _NAME_RE.match(entry):
        raise ValueError(
            f"device_recipients[{device!r}]: {entry!r} is neither an account name nor role:NAME"
        )
