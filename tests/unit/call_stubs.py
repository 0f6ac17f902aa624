"""A ``Call`` with no SIP, media or database behind it, for unit tests of its own logic: the
bridge is the test's stub, the record and media session bare stand-ins."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from telepath.calls.call import Call


async def _never(*args: object) -> None:
    raise AssertionError("not expected")


def stub_call(bridge: object) -> Call:
    """A PCMU call on ``bridge``; its finish (``on_finished``) must not be reached."""
    record = SimpleNamespace(id="call_test")
    media = SimpleNamespace(queued_ms=0, hold=lambda held: None)
    negotiated = SimpleNamespace(codec=SimpleNamespace(name="PCMU"))
    return Call(
        cast(Any, record),
        cast(Any, media),
        cast(Any, bridge),
        cast(Any, negotiated),
        hangup_sip=lambda: None,
        refer_sip=lambda target: None,
        on_finished=_never,
    )
