"""Audio codecs behind one small interface, selected by name from a registry.

A :class:`CodecSpec` says what SDP negotiated (name, payload type, RTP clock rate) and what PCM
the codec speaks (``sample_rate``). :func:`make_codec` returns a :class:`FrameCodec` — stateful
for G.722, so make one per call direction pair. Every codec here produces ``8 * ptime_ms``
payload bytes per frame (64 kbit/s), which lets the outbound queue count audio in bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from telepath.rtp import g711
from telepath.rtp.g722 import G722Decoder, G722Encoder

CodecName = Literal["PCMU", "PCMA", "G722"]

#: RFC 3551 §6 static payload types.
STATIC_PAYLOAD_TYPES: dict[CodecName, int] = {"PCMU": 0, "PCMA": 8, "G722": 9}

#: The default of a receive-side payload type: "the number we send with". RFC 3264 §5.1/§6.1:
#: each side's SDP numbers are what it receives, so the two directions' numbers coincide when we
#: answer (we reuse the offer's) but may differ when we offer. RTP payload types are 7 bits (RFC
#: 3550 §5.1): no real one is negative.
SAME_AS_SEND = -1


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """A negotiated audio codec.

    Attributes:
        name: "PCMU", "PCMA" or "G722".
        payload_type: the RTP payload type agreed in SDP.
    """

    name: CodecName
    payload_type: int

    @classmethod
    def static(cls, name: CodecName) -> CodecSpec:
        """The codec with its RFC 3551 static payload type."""
        return cls(name, STATIC_PAYLOAD_TYPES[name])

    @property
    def sample_rate(self) -> int:
        """PCM sample rate in Hz (16000 for G.722, else 8000)."""
        return 16000 if self.name == "G722" else 8000

    @property
    def clock_rate(self) -> int:
        """RTP timestamp rate in Hz: 8000 for all three (G.722's RFC 3551 §4.5.2 quirk)."""
        return 8000

    def payload_bytes(self, ptime_ms: int) -> int:
        """Encoded bytes in one frame of ``ptime_ms``."""
        return 8 * ptime_ms

    def pcm_bytes(self, ptime_ms: int) -> int:
        """PCM16 bytes in one frame of ``ptime_ms``."""
        return 2 * self.sample_rate * ptime_ms // 1000


class FrameCodec(Protocol):
    """Encode/decode for one call; ``decode`` and ``encode`` keep per-direction state."""

    spec: CodecSpec

    def decode(self, payload: bytes) -> bytes:
        """Payload to PCM16 at ``spec.sample_rate``."""
        ...

    def encode(self, pcm: bytes) -> bytes:
        """PCM16 at ``spec.sample_rate`` to payload."""
        ...

    def silence(self, payload_bytes: int) -> bytes:
        """``payload_bytes`` of encoded silence."""
        ...


class G711Codec:
    """PCMU or PCMA (stateless)."""

    def __init__(self, spec: CodecSpec) -> None:
        self.spec = spec
        ulaw = spec.name == "PCMU"
        self._decode: Callable[[bytes], bytes] = g711.ulaw_to_pcm16 if ulaw else g711.alaw_to_pcm16
        self._encode: Callable[[bytes], bytes] = g711.pcm16_to_ulaw if ulaw else g711.pcm16_to_alaw
        self._silence_byte = bytes((g711.PCMU_SILENCE if ulaw else g711.PCMA_SILENCE,))

    def decode(self, payload: bytes) -> bytes:
        """Decode G.711 to PCM16."""
        return self._decode(payload)

    def encode(self, pcm: bytes) -> bytes:
        """Encode PCM16 to G.711."""
        return self._encode(pcm)

    def silence(self, payload_bytes: int) -> bytes:
        """Encoded digital silence."""
        return self._silence_byte * payload_bytes


class G722Codec:
    """G.722 at 64 kbit/s (stateful ADPCM: one encoder and one decoder per call)."""

    def __init__(self, spec: CodecSpec) -> None:
        self.spec = spec
        self._encoder = G722Encoder()
        self._decoder = G722Decoder()

    def decode(self, payload: bytes) -> bytes:
        """Decode G.722 to PCM16 at 16 kHz."""
        return self._decoder.decode(payload)

    def encode(self, pcm: bytes) -> bytes:
        """Encode PCM16 at 16 kHz to G.722."""
        return self._encoder.encode(pcm)

    def silence(self, payload_bytes: int) -> bytes:
        """Encode silence through the encoder so its state stays continuous."""
        return self._encoder.encode(b"\x00\x00" * 2 * payload_bytes)


def make_codec(spec: CodecSpec) -> FrameCodec:
    """Return a fresh codec instance for ``spec``."""
    if spec.name == "G722":
        return G722Codec(spec)
    return G711Codec(spec)
