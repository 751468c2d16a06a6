"""Errors of the media engine.

    EdgeAgentError                      (agent.errors)
     ├── RealtimeError
     │    └── DeviceNotFoundError       a camera, microphone, speaker or command that is absent
     │                                  or went away; ``device`` names it
     └── MediaError                     the media engine itself
          └── EncoderUnavailableError   no encoder for a codec could be opened

A missing device is a ``DeviceNotFoundError`` because the caller is told DEVICE_NOT_FOUND.
"""

from __future__ import annotations

from agent.errors import DeviceNotFoundError, EdgeAgentError, Texts

__all__ = ["DeviceNotFoundError", "EncoderUnavailableError", "MediaError", "device_not_found"]


class MediaError(EdgeAgentError):
    """A failure inside the media engine (not a missing device)."""


class EncoderUnavailableError(MediaError):
    """No encoder for ``codec`` could be opened; ``tried`` lists the candidates."""

    def __init__(self, codec: str, tried: tuple[str, ...], reason: str) -> None:
        super().__init__(f"no {codec} encoder could be opened (tried {', '.join(tried)}): {reason}")
        self.codec = codec
        self.tried = tried


def device_not_found(device: str, reason: str) -> DeviceNotFoundError:
    """A DEVICE_NOT_FOUND error whose message keeps the reference text and names the device."""
    return DeviceNotFoundError(device, f"{Texts.DEVICE_NOT_FOUND} {device}: {reason}")
