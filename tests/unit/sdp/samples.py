"""Load the SDP offers in tests/data/sdp (CRLF, byte-exact; see its README)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "data" / "sdp"

#: Every stored sample, by file stem.
SAMPLE_NAMES: tuple[str, ...] = tuple(sorted(p.stem for p in DATA.glob("*.sdp")))


def load_sample(name: str) -> bytes:
    """Return the bytes of ``tests/data/sdp/<name>.sdp``."""
    return (DATA / f"{name}.sdp").read_bytes()
