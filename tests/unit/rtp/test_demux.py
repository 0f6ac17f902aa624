"""Telling STUN from RTP and RTCP by the first bytes (rtp/demux.py, RFC 7983 §7)."""

from __future__ import annotations

from aioice import stun

from telepath.rtp.demux import is_stun
from telepath.rtp.packet import pack_rtp


def test_stun_messages_are_told_from_rtp_and_rtcp() -> None:
    request = bytes(
        stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    )
    assert is_stun(request)
    assert not is_stun(request[:19])  # shorter than a STUN header
    assert not is_stun(request[:4] + b"\x00\x00\x00\x00" + request[8:])  # no magic cookie
    assert not is_stun(b"\x40" + request[1:])  # first byte 64: not 0-3
    assert not is_stun(
        pack_rtp(0, 1, 0x2112A442, 5, b"\xff" * 160, False)
    )  # cookie as its timestamp
    assert not is_stun(b"\x81\xc9\x00\x07" + bytes(28))  # an RTCP receiver report
