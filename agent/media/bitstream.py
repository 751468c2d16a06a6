"""Pure H.264 Annex B and MJPEG stream splitting: bytes in, access units out.

H.264 byte streams (ITU-T H.264 Annex B) are cut into NAL units at start codes and grouped
into access units by the rules of H.264 section 7.4.1.2.3: an access unit ends before an
access unit delimiter, SPS, PPS, SEI or prefix NAL that follows a slice, or before a slice
whose ``first_mb_in_slice`` is 0. RTP packetization (RFC 6184) needs whole access units, and
a decoder joining mid-stream needs SPS and PPS in front of every IDR, which
``ParameterSetCache`` guarantees for sources that send them only once.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.media.errors import MediaError

__all__ = [
    "START_CODE",
    "AccessUnit",
    "AnnexBSplitter",
    "BitstreamError",
    "JpegSplitter",
    "NalType",
    "ParameterSetCache",
    "is_idr",
    "join_nal_units",
    "nal_types",
    "split_nal_units",
]

START_CODE = b"\x00\x00\x00\x01"
_SHORT_START = b"\x00\x00\x01"
_DEFAULT_LIMIT = 8 * 1024 * 1024  # bytes buffered without a boundary before giving up


class NalType:
    """NAL unit types of H.264 table 7-1 that matter for splitting."""

    SLICE = 1
    IDR = 5
    SEI = 6
    SPS = 7
    PPS = 8
    AUD = 9
    PREFIX_FIRST = 14  # 14..18 start a new access unit like SEI does
    PREFIX_LAST = 18


_VCL = frozenset({NalType.SLICE, 2, 3, 4, NalType.IDR})
_STARTS_AU = frozenset({NalType.AUD, NalType.SPS, NalType.PPS, NalType.SEI, 14, 15, 16, 17, 18})


class BitstreamError(MediaError, ValueError):
    """A byte stream that cannot be split (no boundary within the size limit)."""


@dataclass(frozen=True, slots=True)
class AccessUnit:
    """One coded picture in Annex B form (4-byte start codes); ``key`` if it holds an IDR."""

    data: bytes
    key: bool


def split_nal_units(data: bytes) -> list[bytes]:
    """NAL units of an Annex B buffer, without start codes or trailing zero bytes."""
    units: list[bytes] = []
    start = data.find(_SHORT_START)
    while start != -1:
        begin = start + 3
        start = data.find(_SHORT_START, begin)
        unit = data[begin:] if start == -1 else data[begin:start]
        unit = unit.rstrip(b"\x00")
        if unit:
            units.append(unit)
    return units


def join_nal_units(units: list[bytes]) -> bytes:
    """Annex B buffer of ``units`` with 4-byte start codes."""
    return b"".join(START_CODE + unit for unit in units)


def nal_types(data: bytes) -> list[int]:
    """NAL unit types of an Annex B buffer, in order."""
    return [unit[0] & 0x1F for unit in split_nal_units(data)]


def is_idr(data: bytes) -> bool:
    """True if the Annex B buffer contains an IDR slice."""
    return NalType.IDR in nal_types(data)


class AnnexBSplitter:
    """Incremental Annex B parser: ``feed`` chunks, get complete access units."""

    def __init__(self, *, limit: int = _DEFAULT_LIMIT) -> None:
        self._buffer = bytearray()
        self._limit = limit
        self._units: list[bytes] = []
        self._has_vcl = False

    def feed(self, chunk: bytes) -> list[AccessUnit]:
        """Add bytes; return the access units completed by them."""
        self._buffer += chunk
        done: list[AccessUnit] = []
        for unit in self._complete_units():
            done.extend(self._add_unit(unit))
        if len(self._buffer) > self._limit:
            self._buffer.clear()
            raise BitstreamError(f"no H.264 start code within {self._limit} bytes")
        return done

    def flush(self) -> list[AccessUnit]:
        """Return whatever is buffered as a final access unit (end of stream)."""
        tail = bytes(self._buffer)
        self._buffer.clear()
        done: list[AccessUnit] = []
        for unit in split_nal_units(tail):
            done.extend(self._add_unit(unit))
        if self._units:
            done.append(self._finish())
        return done

    def _complete_units(self) -> list[bytes]:
        """NAL units followed by another start code; the last one stays buffered."""
        first = self._buffer.find(_SHORT_START)
        if first == -1:
            return []
        last = self._buffer.rfind(_SHORT_START)
        if last == first:
            return []
        complete = bytes(self._buffer[first:last])
        del self._buffer[:last]
        return split_nal_units(complete)

    def _add_unit(self, unit: bytes) -> list[AccessUnit]:
        kind = unit[0] & 0x1F
        done = []
        if self._has_vcl and _begins_access_unit(kind, unit):
            done.append(self._finish())
        self._units.append(unit)
        self._has_vcl = self._has_vcl or kind in _VCL
        return done

    def _finish(self) -> AccessUnit:
        units, self._units, self._has_vcl = self._units, [], False
        key = any(unit[0] & 0x1F == NalType.IDR for unit in units)
        return AccessUnit(join_nal_units(units), key)


def _begins_access_unit(kind: int, unit: bytes) -> bool:
    """H.264 7.4.1.2.3: does this NAL start a new access unit after a slice?"""
    if kind in _STARTS_AU:
        return True
    # first_mb_in_slice is the first ue(v) of the slice header; the value 0 is the single
    # bit "1", so the top bit of the byte after the NAL header is set exactly then.
    return kind in _VCL and len(unit) > 1 and bool(unit[1] & 0x80)


class ParameterSetCache:
    """Remembers the latest SPS and PPS and puts them in front of IDRs that lack them."""

    def __init__(self) -> None:
        self._sps: bytes | None = None
        self._pps: bytes | None = None

    def apply(self, unit: AccessUnit) -> AccessUnit:
        """``unit`` with SPS and PPS before its IDR slice when they were missing."""
        units = split_nal_units(unit.data)
        kinds = [u[0] & 0x1F for u in units]
        for u, kind in zip(units, kinds, strict=True):
            if kind == NalType.SPS:
                self._sps = u
            elif kind == NalType.PPS:
                self._pps = u
        if not unit.key or (NalType.SPS in kinds and NalType.PPS in kinds):
            return unit
        if self._sps is None or self._pps is None:
            return unit
        at = kinds.index(NalType.IDR)
        head = [u for u, k in zip(units[:at], kinds[:at], strict=True) if k == NalType.AUD]
        rest = [u for u, k in zip(units, kinds, strict=True) if k != NalType.AUD]
        return AccessUnit(join_nal_units([*head, self._sps, self._pps, *rest]), key=True)


_SOI = b"\xff\xd8\xff"
_EOI = b"\xff\xd9"


class JpegSplitter:
    """Incremental MJPEG splitter: images run from SOI (FFD8) to the next EOI (FFD9).

    Entropy-coded data stuffs every 0xFF with 0x00 (ITU-T T.81 B.1.1.5), so FFD9 there
    always ends the image; embedded EXIF thumbnails are not expected from cameras' MJPEG.
    """

    def __init__(self, *, limit: int = _DEFAULT_LIMIT) -> None:
        self._buffer = bytearray()
        self._limit = limit

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes; return the complete JPEG images in them."""
        self._buffer += chunk
        images: list[bytes] = []
        while (image := self._next_image()) is not None:
            images.append(image)
        if len(self._buffer) > self._limit:
            self._buffer.clear()
            raise BitstreamError(f"no complete JPEG image within {self._limit} bytes")
        return images

    def _next_image(self) -> bytes | None:
        start = self._buffer.find(_SOI)
        if start == -1:
            del self._buffer[: max(0, len(self._buffer) - 2)]
            return None
        end = self._buffer.find(_EOI, start + 2)
        if end == -1:
            del self._buffer[:start]
            return None
        image = bytes(self._buffer[start : end + 2])
        del self._buffer[: end + 2]
        return image
