"""The little audio conversion the bridges need, kept in one place so it can be swapped later.

The happy path converts nothing: the call's G.711 payload goes to the provider as it is. A
``WireFormat`` describes what a provider speaks; ``AudioConverter`` converts between it and the
call's side (A-law and μ-law via PCM16; resampling through the project's low-pass FIR,
``rtp/resample.py``, wherever the result must not alias or image; ``audioop.ratecv`` for a
G.711 caller's audio to a 16/24 kHz agent, as before, and for rates the FIR does not take).

``audioop`` is deprecated since Python 3.11 and gone from the stdlib in 3.13, where the
``audioop-lts`` package (a conditional dependency) provides it under the same name.
"""

from __future__ import annotations

import binascii
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from telepath.bridges.base import Codec
from telepath.rtp.resample import RESAMPLED_RATES, Resampler

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "WIDEBAND",
    "AudioConverter",
    "Encoding",
    "WireFormat",
    "b64_decode",
    "b64_encode",
    "convert",
    "duration_ms",
]

Encoding = Literal["ulaw", "alaw", "pcm16"]

_SAMPLE_WIDTH = 2  # PCM16


def b64_decode(text: str) -> bytes:
    """Audio in base64 as every provider sends it (RFC 4648 §4, padded).

    Raises:
        binascii.Error: anything else (a character outside the alphabet, bad padding).

    One C call in strict mode (Python 3.11+), where ``base64.b64decode(validate=True)`` adds
    two Python calls and a regular expression: the same answers, per audio message.
    """
    return binascii.a2b_base64(text, strict_mode=True)


def b64_encode(data: bytes) -> str:
    """Audio as base64 text for a JSON message."""
    return binascii.b2a_base64(data, newline=False).decode("ascii")


@dataclass(frozen=True, slots=True)
class WireFormat:
    """An audio format on a provider's wire: encoding and sample rate (mono)."""

    encoding: Encoding
    rate: int = 8000

    @classmethod
    def for_codec(cls, codec: Codec) -> WireFormat:
        """The G.711 wire format of a call codec."""
        return cls("ulaw" if codec == "pcmu" else "alaw", 8000)

    @property
    def bytes_per_ms(self) -> float:
        """Bytes per millisecond of audio."""
        width = 1 if self.encoding in ("ulaw", "alaw") else _SAMPLE_WIDTH
        return self.rate * width / 1000


#: A G.722 caller's audio as the gateway decodes it.
WIDEBAND = WireFormat("pcm16", 16000)


def duration_ms(data: bytes, fmt: WireFormat) -> float:
    """Duration of ``data`` in ``fmt``, in milliseconds."""
    return len(data) / fmt.bytes_per_ms


def _to_pcm16(data: bytes, encoding: Encoding) -> bytes:
    if encoding == "ulaw":
        return audioop.ulaw2lin(data, _SAMPLE_WIDTH)
    if encoding == "alaw":
        return audioop.alaw2lin(data, _SAMPLE_WIDTH)
    return data


def _from_pcm16(pcm: bytes, encoding: Encoding) -> bytes:
    if encoding == "ulaw":
        return audioop.lin2ulaw(pcm, _SAMPLE_WIDTH)
    if encoding == "alaw":
        return audioop.lin2alaw(pcm, _SAMPLE_WIDTH)
    return pcm


class _OneWay:
    """Stateful conversion in one direction (resampler state and odd PCM bytes carried over)."""

    def __init__(self, src: WireFormat, dst: WireFormat, *, filter_up: bool = False) -> None:
        self.src = src
        self.dst = dst
        self._state: Any = None
        self._odd = b""
        self.identity = src == dst
        # Down to a lower rate through a low-pass filter: ratecv only interpolates, so a 16 kHz
        # G.722 caller's 4-8 kHz band would fold back into the telephone band (aliasing). Up
        # through it too where asked (wideband calls): linear interpolation leaves images of
        # the band only ~13 dB down above it (a 3 kHz tone at 8 kHz -> a 5 kHz one at 16 kHz).
        self._filter = (
            Resampler(src.rate, dst.rate)
            if (src.rate > dst.rate or (filter_up and src.rate < dst.rate))
            and {src.rate, dst.rate} <= set(RESAMPLED_RATES)
            else None
        )

    def reset(self) -> None:
        """Start a new stream: drop the half sample carried over and the resampler state.

        Kept across a cut, the half sample would pair with the next stream's first byte and
        shift every later sample by one byte (noise), and the filter would play the old
        stream's last milliseconds into the new one.
        """
        self._odd = b""
        self._state = None
        if self._filter is not None:
            self._filter = Resampler(self.src.rate, self.dst.rate)

    def __call__(self, data: bytes) -> bytes:
        if self.src.encoding == "pcm16" and (self._odd or len(data) % _SAMPLE_WIDTH):
            # A sample split across two messages: whole samples only, even unconverted.
            data = self._odd + data
            cut = len(data) - len(data) % _SAMPLE_WIDTH
            data, self._odd = data[:cut], data[cut:]
        if self.identity:
            return data
        pcm = _to_pcm16(data, self.src.encoding)
        if self._filter is not None:
            pcm = self._filter.process(pcm)
        elif self.src.rate != self.dst.rate:
            pcm, self._state = audioop.ratecv(
                pcm, _SAMPLE_WIDTH, 1, self.src.rate, self.dst.rate, self._state
            )
        return _from_pcm16(pcm, self.dst.encoding)


def convert(data: bytes, src: WireFormat, dst: WireFormat) -> bytes:
    """Convert one self-contained buffer (no state carried to the next call)."""
    return _OneWay(src, dst)(data)


class AudioConverter:
    """Converts caller audio to a provider's format and agent audio back to the call's side.

    Args:
        codec: the call's G.711 law.
        to_agent: the format the agent expects for caller audio.
        from_agent: the format the agent sends; defaults to ``to_agent``.
        wideband: a wideband call (``CallMetadata.wideband``): caller audio comes as 16 kHz
            PCM16, not in ``codec``, and agent audio goes back as 16 kHz PCM16 too.
    """

    def __init__(
        self,
        codec: Codec,
        to_agent: WireFormat,
        from_agent: WireFormat | None = None,
        *,
        wideband: bool = False,
    ) -> None:
        self.call_format = WIDEBAND if wideband else WireFormat.for_codec(codec)
        self.agent_in = to_agent
        self.agent_out = from_agent or to_agent
        self._up = _OneWay(self.call_format, self.agent_in, filter_up=wideband)
        self._down = _OneWay(self.agent_out, self.call_format, filter_up=True)

    @property
    def passthrough(self) -> bool:
        """True when neither direction converts anything."""
        return self.agent_in == self.call_format and self.agent_out == self.call_format

    def to_agent(self, payload: bytes) -> bytes:
        """Caller payload (G.711, or 16 kHz PCM16 when wideband) -> agent input format."""
        return self._up(payload)

    def from_agent(self, data: bytes) -> bytes:
        """Agent output audio -> call G.711 payload (16 kHz PCM16 when wideband)."""
        return self._down(data)

    def restart_from_agent(self) -> None:
        """The agent's next audio begins a new stream: after a barge-in's clear (the call's
        playout dropped the rest of the turn, half sample and all) or on a new connection to
        the agent (the old one's last message may have ended mid-sample). The caller's
        direction goes on untouched."""
        self._down.reset()
