"""Data channel options of ``connect_rtc``: the reference client's presets, checked. Pure.

The presets are the hosted service's browser client's (skapi-js ``connectRTC``), where a
channel's label is its protocol name:

    ========================  =======  =====================================
    preset                    ordered  reliability
    ========================  =======  =====================================
    ``"text-chat"``           yes      ``maxRetransmits`` 10
    ``"file-transfer"``       no       ``maxPacketLifeTime`` 3000 ms
    ``"video-chat"``          yes      ``maxRetransmits`` 10
    ``"voice-chat"``          yes      ``maxRetransmits`` 10
    ``"gaming"``              no       ``maxPacketLifeTime`` 100 ms
    (no ``channels`` given)   yes      ``maxPacketLifeTime`` 10 ms, protocol ``"default"``
    ========================  =======  =====================================

An options dict takes ``ordered``, ``maxPacketLifeTime``, ``maxRetransmits`` and
``protocol`` (snake_case spellings too); its protocol defaults to ``"default"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from agent.errors import Codes, RealtimeError, Texts

__all__ = ["DEFAULT_CHANNELS", "PRESETS", "ChannelSpec", "channel_specs"]

_MAX_PROTOCOL_CHARS: Final = 256  # W3C: label and protocol are at most 65535 bytes; keep it sane
_MAX_CHANNELS: Final = 64
_OPTION_KEYS: Final = {
    "ordered": "ordered",
    "maxPacketLifeTime": "max_packet_life_time",
    "max_packet_life_time": "max_packet_life_time",
    "maxRetransmits": "max_retransmits",
    "max_retransmits": "max_retransmits",
    "protocol": "protocol",
}


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """One data channel to create; the label is the protocol name."""

    protocol: str = "default"
    ordered: bool = True
    max_packet_life_time: int | None = None
    max_retransmits: int | None = None


PRESETS: Final = {
    "text-chat": ChannelSpec("text-chat", True, max_retransmits=10),
    "file-transfer": ChannelSpec("file-transfer", False, max_packet_life_time=3000),
    "video-chat": ChannelSpec("video-chat", True, max_retransmits=10),
    "voice-chat": ChannelSpec("voice-chat", True, max_retransmits=10),
    "gaming": ChannelSpec("gaming", False, max_packet_life_time=100),
}

DEFAULT_CHANNELS: Final = (ChannelSpec("default", True, max_packet_life_time=10),)


def channel_specs(channels: Iterable[str | Mapping[str, Any]] | None) -> list[ChannelSpec]:
    """The channels to create for ``channels`` (presets or option dicts).

    Raises:
        RealtimeError: INVALID_REQUEST 'Data channel with the protocol "NAME" already
            exists.' for a repeated protocol; INVALID_PARAMETER for an unknown preset or
            a bad option.
    """
    if channels is None:
        return list(DEFAULT_CHANNELS)
    if isinstance(channels, str | Mapping):
        channels = [channels]
    specs: list[ChannelSpec] = []
    seen: set[str] = set()
    for item in channels:
        spec = _spec(item)
        if spec.protocol in seen:
            raise RealtimeError(Codes.INVALID_REQUEST, Texts.duplicate_channel(spec.protocol))
        seen.add(spec.protocol)
        specs.append(spec)
        if len(specs) > _MAX_CHANNELS:
            raise RealtimeError(
                Codes.INVALID_PARAMETER, f"At most {_MAX_CHANNELS} data channels per call."
            )
    return specs


def _spec(item: Any) -> ChannelSpec:
    if isinstance(item, str):
        preset = PRESETS.get(item)
        if preset is None:
            raise RealtimeError(
                Codes.INVALID_PARAMETER,
                f'Unknown data channel preset "{item}". Use one of: {", ".join(PRESETS)}, '
                "or an options object.",
            )
        return preset
    if not isinstance(item, Mapping):
        raise RealtimeError(
            Codes.INVALID_PARAMETER, "A data channel is a preset name or an options object."
        )
    return _from_options(item)


def _from_options(options: Mapping[str, Any]) -> ChannelSpec:
    unknown = sorted(str(key) for key in options if key not in _OPTION_KEYS)
    if unknown:
        raise RealtimeError(
            Codes.INVALID_PARAMETER,
            f"Unknown data channel option(s): {', '.join(unknown)}. "
            "Use ordered, maxPacketLifeTime, maxRetransmits, protocol.",
        )
    values = {_OPTION_KEYS[key]: value for key, value in options.items()}
    protocol = values.get("protocol") or "default"
    ordered = values.get("ordered", True)
    lifetime = values.get("max_packet_life_time")
    retransmits = values.get("max_retransmits")
    if not isinstance(protocol, str) or len(protocol) > _MAX_PROTOCOL_CHARS:
        raise RealtimeError(Codes.INVALID_PARAMETER, '"protocol" must be a short string.')
    if not isinstance(ordered, bool):
        raise RealtimeError(Codes.INVALID_PARAMETER, '"ordered" must be a boolean.')
    for name, value in (("maxPacketLifeTime", lifetime), ("maxRetransmits", retransmits)):
        if value is not None and (type(value) is not int or not 0 <= value <= 65535):
            raise RealtimeError(
                Codes.INVALID_PARAMETER, f'"{name}" must be an integer from 0 to 65535.'
            )
    if lifetime is not None and retransmits is not None:
        # W3C createDataChannel: setting both is a TypeError.
        raise RealtimeError(
            Codes.INVALID_PARAMETER, 'Give "maxPacketLifeTime" or "maxRetransmits", not both.'
        )
    return ChannelSpec(protocol, ordered, lifetime, retransmits)
