"""Session timers (RFC 4028): who refreshes, how often, and what the headers say.

Pure functions over parsed messages; the UA core (``ua.py``) owns the timers and sends the
refreshes. Terms: the *refresher* is the side that sends a re-INVITE or UPDATE before the
session interval runs out; the other side sends BYE when it does not see one in time (§10).
"""

from __future__ import annotations

from dataclasses import dataclass

from telepath.sip.message import Request, Response

SESSION_EXPIRES = "Session-Expires"


@dataclass(frozen=True, slots=True)
class Timer:
    """The outcome of a negotiation, from our side of the dialog."""

    interval: int  # seconds (the delta-seconds of Session-Expires)
    we_refresh: bool
    peer_supports: bool  # the peer listed ``timer`` in Supported (we may then Require it)


def parse_session_expires(value: str | None) -> tuple[int, str | None] | None:
    """``Session-Expires: 1800;refresher=uac`` → ``(1800, "uac")`` (§4); ``None`` if unusable."""
    if value is None:
        return None
    number, _, params = value.partition(";")
    number = number.strip()
    if not (number.isascii() and number.isdigit()) or len(number) >= 10:
        return None
    refresher: str | None = None
    for param in params.split(";"):
        name, _, val = param.partition("=")
        if name.strip().lower() == "refresher" and val.strip().lower() in ("uac", "uas"):
            refresher = val.strip().lower()
    return int(number), refresher


def supports_timer(message: Request | Response) -> bool:
    """The ``timer`` option tag in Supported (or Require) (§7.1, §9)."""
    tags = message.headers.get_all("Supported") + message.headers.get_all("Require")
    return any(tag.strip().lower() == "timer" for tag in tags)


def negotiate_as_uas(
    request: Request, *, min_se: int, default_interval: int, current: Timer | None = None
) -> Timer | None:
    """What our 2xx to an INVITE or UPDATE says (§9, the table of who refreshes).

    ============  ===================  =========================
    UAC supports  refresher in request  refresher in our 2xx
    ============  ===================  =========================
    no            (none)                uas — we refresh
    yes           (none)                uac (our choice: the caller refreshes)
    yes           uac                   uac
    yes           uas                   uas — we refresh
    ============  ===================  =========================

    Without ``Supported: timer`` and without ``Session-Expires`` (no proxy asked for one) there is
    no timer, unless one was already running in this dialog (``current``), which then keeps
    its interval with us refreshing. An interval we choose ourselves is at least ``min_se`` and
    the request's Min-SE (§9: the UAS MUST NOT set one below it). The request's Session-Expires
    is taken as it is (§9: the UAS MUST NOT increase it): one below ``min_se`` was refused with
    422 before we get here (§9, :func:`too_short`) — unless the UAC does not support timers,
    whose interval is raised to ``min_se``, with us refreshing.
    """
    peer = supports_timer(request)
    parsed = parse_session_expires(request.headers.get(SESSION_EXPIRES))
    if parsed is None:
        floor = max(min_se, min_se_of(request) or 0)
        if not peer:
            if current is None:
                return None
            return Timer(max(floor, current.interval), True, False)
        interval = current.interval if current is not None else default_interval
        return Timer(max(floor, interval), False, True)
    interval, refresher = parsed
    interval = max(min_se, interval)
    if not peer:
        return Timer(interval, True, False)
    return Timer(interval, refresher == "uas", True)


def too_short(request: Request, min_se: int) -> bool:
    """Whether ``request`` asks for a session interval below ``min_se`` and is to be answered
    422 with our Min-SE (§9), be it an INVITE or a session refresh in a dialog (a re-INVITE or
    UPDATE, §10) — accepting it, the UAS could only increase it, which §9 forbids. Only from
    a UAC that supports timers: another cannot retry with our Min-SE, so a 422 would fail the
    call; its interval (a proxy's) is raised to ours instead, and we refresh (§8.1 for a
    proxy, RFC 4028 erratum 1687 for the UAS; :func:`negotiate_as_uas`)."""
    parsed = parse_session_expires(request.headers.get(SESSION_EXPIRES))
    return parsed is not None and parsed[0] < min_se and supports_timer(request)


def response_headers(timer: Timer) -> list[tuple[str, str]]:
    """Session-Expires (and Require: timer when the peer supports it) for our 2xx (§9)."""
    refresher = "uas" if timer.we_refresh else "uac"
    headers = [(SESSION_EXPIRES, f"{timer.interval};refresher={refresher}")]
    if timer.peer_supports:
        headers.insert(0, ("Require", "timer"))
    return headers


def refresh_headers(interval: int) -> list[tuple[str, str]]:
    """What our refresh request carries: we are its UAC and want to stay the refresher (§7.4)."""
    return [(SESSION_EXPIRES, f"{interval};refresher=uac")]


def after_refresh(response: Response, asked: int, *, min_se: int) -> Timer:
    """The timer a 2xx to our refresh leaves in place (§7.2 applied to a mid-dialog request).

    The 2xx may lower the interval (never below ``min_se``) or hand refreshing to the peer
    (``refresher=uas``: the UAS of our request, i.e. the caller). A 2xx without Session-Expires
    comes from a peer without timer support: we go on refreshing at the interval we asked for.
    """
    parsed = parse_session_expires(response.headers.get(SESSION_EXPIRES))
    if parsed is None:
        return Timer(asked, True, False)
    interval, refresher = parsed
    return Timer(max(min_se, interval), refresher != "uas", True)


def refresh_at(interval: int) -> float:
    """§10: the refresher sends its refresh half-way through the interval."""
    return interval / 2


def expiry_margin(interval: int) -> float:
    """§10: the side that sees no refresh sends BYE at expiry minus min(32 s, interval / 3)."""
    return interval - min(32.0, interval / 3)


def min_se_of(message: Request | Response) -> int | None:
    """The Min-SE of a 422 (§6) or of a request (§5), or ``None`` when missing or malformed."""
    value = (message.headers.get("Min-SE") or "").split(";", 1)[0].strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) < 10 else None
