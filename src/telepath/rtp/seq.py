"""Named wrap-around arithmetic for RTP sequence numbers and timestamps (RFC 3550 §5.1, §A.1).

RTP sequence numbers are 16-bit and RTP timestamps 32-bit unsigned counters that wrap. Code
outside this module never compares or subtracts them inline: ``a > b`` is wrong across the wrap.
"Newer" follows serial-number arithmetic: ``a`` is newer than ``b`` when the forward distance from
``b`` to ``a`` is less than half the counter's range.
"""

from __future__ import annotations

SEQ_MODULUS = 1 << 16
TS_MODULUS = 1 << 32
_SEQ_HALF = SEQ_MODULUS >> 1
_TS_HALF = TS_MODULUS >> 1


def seq_add(seq: int, delta: int) -> int:
    """Return ``seq + delta`` wrapped to 16 bits (``delta`` may be negative)."""
    return (seq + delta) & 0xFFFF


def seq_diff(a: int, b: int) -> int:
    """Return the signed distance from ``b`` to ``a`` in ``[-32768, 32767]``.

    ``seq_diff(1, 65535) == 2``: packet 1 is two steps after packet 65535 across the wrap.
    """
    d = (a - b) & 0xFFFF
    return d - SEQ_MODULUS if d >= _SEQ_HALF else d


def seq_gt(a: int, b: int) -> bool:
    """Return True when sequence number ``a`` is newer than ``b`` (wrap-aware)."""
    return seq_diff(a, b) > 0


def seq_gte(a: int, b: int) -> bool:
    """Return True when ``a`` is ``b`` or newer than ``b`` (wrap-aware)."""
    return seq_diff(a, b) >= 0


def ts_add(ts: int, delta: int) -> int:
    """Return ``ts + delta`` wrapped to 32 bits (``delta`` may be negative)."""
    return (ts + delta) & 0xFFFFFFFF


def ts_diff(a: int, b: int) -> int:
    """Return the signed distance from timestamp ``b`` to ``a`` in ``[-2**31, 2**31 - 1]``."""
    d = (a - b) & 0xFFFFFFFF
    return d - TS_MODULUS if d >= _TS_HALF else d


def ts_gt(a: int, b: int) -> bool:
    """Return True when timestamp ``a`` is later than ``b`` (wrap-aware)."""
    return ts_diff(a, b) > 0


def ts_gte(a: int, b: int) -> bool:
    """Return True when timestamp ``a`` is ``b`` or later (wrap-aware)."""
    return ts_diff(a, b) >= 0
