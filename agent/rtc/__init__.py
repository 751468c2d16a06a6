"""Calls over WebRTC: signaling, ICE, placing calls and answering them.

* ``RealtimeClient.connect_rtc`` places a call (:mod:`agent.rtc.engine`), with the
  reference's signaling (:mod:`agent.rtc.signaling`, pure) and data channel presets
  (:mod:`agent.rtc.channels`);
* :class:`CallDesk` answers calls on the device with the media hub's tracks, talk-back,
  and data channels by label (``control``, the reserved ``sensors``/``serial:NAME``, ...);
* :mod:`agent.rtc.ice`: explicit ICE servers, host address restriction, mDNS candidates;
* :mod:`agent.rtc.settings`: the ``[calls]`` table (``[video]`` and ``[audio]`` are the
  media engine's: :mod:`agent.media.settings`).

Names are imported on first use: loading the settings models (as ``agent.config`` does)
does not load aiortc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.lazy import lazy_exports

if TYPE_CHECKING:
    from agent.rtc.calls import IncomingCall, RtcConnection, RtcConnector
    from agent.rtc.channels import ChannelSpec, channel_specs
    from agent.rtc.control import Blob, ControlServer
    from agent.rtc.datachannels import ChannelHandler, ChannelRegistry, ChannelSession
    from agent.rtc.desk import AccountDirectory, CallDesk, CallerDirectory
    from agent.rtc.engine import RtcEngine
    from agent.rtc.errors import CallEndedError
    from agent.rtc.ice import IceOptions, IceServer
    from agent.rtc.mdns import MdnsResolver
    from agent.rtc.media import LocalMedia, MediaDevices, NoMediaDevices
    from agent.rtc.peer import PeerFactory
    from agent.rtc.policy import Caller, CallPolicy, Refusal
    from agent.rtc.settings import CallsSettings
    from agent.rtc.signaling import CallState, CloseReason, Signaling, Switchboard

__all__ = [
    "AccountDirectory",
    "Blob",
    "CallDesk",
    "CallEndedError",
    "CallPolicy",
    "CallState",
    "Caller",
    "CallerDirectory",
    "CallsSettings",
    "ChannelHandler",
    "ChannelRegistry",
    "ChannelSession",
    "ChannelSpec",
    "CloseReason",
    "ControlServer",
    "IceOptions",
    "IceServer",
    "IncomingCall",
    "LocalMedia",
    "MdnsResolver",
    "MediaDevices",
    "NoMediaDevices",
    "PeerFactory",
    "Refusal",
    "RtcConnection",
    "RtcConnector",
    "RtcEngine",
    "Signaling",
    "Switchboard",
    "channel_specs",
]

_HOMES = {
    "AccountDirectory": "agent.rtc.desk",
    "Blob": "agent.rtc.control",
    "CallDesk": "agent.rtc.desk",
    "CallEndedError": "agent.rtc.errors",
    "CallPolicy": "agent.rtc.policy",
    "CallState": "agent.rtc.signaling",
    "Caller": "agent.rtc.policy",
    "CallerDirectory": "agent.rtc.desk",
    "CallsSettings": "agent.rtc.settings",
    "ChannelHandler": "agent.rtc.datachannels",
    "ChannelRegistry": "agent.rtc.datachannels",
    "ChannelSession": "agent.rtc.datachannels",
    "ChannelSpec": "agent.rtc.channels",
    "CloseReason": "agent.rtc.signaling",
    "ControlServer": "agent.rtc.control",
    "IceOptions": "agent.rtc.ice",
    "IceServer": "agent.rtc.ice",
    "IncomingCall": "agent.rtc.calls",
    "LocalMedia": "agent.rtc.media",
    "MdnsResolver": "agent.rtc.mdns",
    "MediaDevices": "agent.rtc.media",
    "NoMediaDevices": "agent.rtc.media",
    "PeerFactory": "agent.rtc.peer",
    "Refusal": "agent.rtc.policy",
    "RtcConnection": "agent.rtc.calls",
    "RtcConnector": "agent.rtc.calls",
    "RtcEngine": "agent.rtc.engine",
    "Signaling": "agent.rtc.signaling",
    "Switchboard": "agent.rtc.signaling",
    "channel_specs": "agent.rtc.channels",
}


__getattr__ = lazy_exports(__name__, _HOMES)
