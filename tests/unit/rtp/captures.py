"""Load the RTP captures in tests/data/rtp (see its README for the format and provenance)."""

from __future__ import annotations

import struct
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "data" / "rtp"


def load_capture(name: str) -> list[bytes]:
    """Return the UDP payloads stored in ``tests/data/rtp/<name>.bin``."""
    data = (DATA / f"{name}.bin").read_bytes()
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack_from("!H", data, pos)
        out.append(data[pos + 2 : pos + 2 + length])
        pos += 2 + length
    return out
