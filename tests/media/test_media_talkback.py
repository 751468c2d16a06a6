"""Talk-back: a caller's audio reaches the device's sink, which counts what it heard."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiortc import AudioStreamTrack, RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack

from agent.errors import DeviceNotFoundError
from agent.media import FileSinkConfig, SpeakerConfig, TalkbackSink, ToneConfig, ToneTrack
from agent.media.talkback import count_nonsilent

from .conftest import WAIT

Call = Callable[[MediaStreamTrack, TalkbackSink], "asyncio.Future[None] | object"]


@pytest.fixture
async def talk() -> AsyncIterator[Callable[[MediaStreamTrack, TalkbackSink], object]]:
    """``await talk(track, sink)``: a caller sends ``track``; the device plays it into ``sink``."""
    peers: list[RTCPeerConnection] = []

    async def call(track: MediaStreamTrack, sink: TalkbackSink) -> None:
        caller = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        device = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        peers.extend((caller, device))
        caller.addTrack(track)
        device.on("track", sink.play)
        await caller.setLocalDescription(await caller.createOffer())
        await device.setRemoteDescription(caller.localDescription)
        await device.setLocalDescription(await device.createAnswer())
        await caller.setRemoteDescription(device.localDescription)

    yield call
    for peer in peers:
        await peer.close()


async def test_caller_tone_is_heard(talk: Callable[..., object]) -> None:
    sink = TalkbackSink()
    try:
        await talk(ToneTrack(ToneConfig(frequency=400, volume=0.5)), sink)  # type: ignore[misc]
        await asyncio.wait_for(sink.wait_for(nonsilent=24_000), WAIT)  # half a second of voice
        assert sink.samples >= sink.nonsilent
    finally:
        await sink.close()


async def test_caller_silence_is_counted_as_silence(talk: Callable[..., object]) -> None:
    sink = TalkbackSink()
    try:
        await talk(AudioStreamTrack(), sink)  # type: ignore[misc]
        await asyncio.wait_for(sink.wait_for(samples=24_000), WAIT)
        assert sink.nonsilent == 0
    finally:
        await sink.close()


async def test_file_sink_writes_a_wav(tmp_path: Path, talk: Callable[..., object]) -> None:
    path = tmp_path / "talkback.wav"
    sink = TalkbackSink(FileSinkConfig(path=path))
    await talk(ToneTrack(), sink)  # type: ignore[misc]
    await asyncio.wait_for(sink.wait_for(nonsilent=9_600), WAIT)
    await sink.close()
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 48_000)
        pcm = wav.readframes(wav.getnframes())
    assert count_nonsilent(pcm) >= 9_600


async def test_missing_speaker_is_reported_and_audio_still_counted(
    talk: Callable[..., object],
) -> None:
    errors: list[DeviceNotFoundError] = []
    sink = TalkbackSink(SpeakerConfig(device="hw:9,0"), on_error=errors.append)
    try:
        await talk(ToneTrack(), sink)  # type: ignore[misc]
        await asyncio.wait_for(sink.wait_for(nonsilent=9_600), WAIT)
        (error,) = errors
        assert error.device == "alsa:hw:9,0"
    finally:
        await sink.close()


def test_count_nonsilent() -> None:
    loud, quiet = (
        (3000).to_bytes(2, "little", signed=True),
        (100).to_bytes(2, "little", signed=True),
    )
    negative = (-3000).to_bytes(2, "little", signed=True)
    assert count_nonsilent(loud * 3 + quiet * 5 + negative) == 4
    assert count_nonsilent(b"") == 0
    assert count_nonsilent(loud + b"\x01") == 1  # a trailing odd byte is ignored
