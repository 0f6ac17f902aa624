"""SIPp scenarios for the SIP front door, built from the call harness's message templates, and a
runner that takes extra SIPp options (``-lost``) and a transport (``u1`` / ``t1``)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.interop.calls.harness import ACK_2XX, ACK_TXN, OK_TO_REQUEST, SippResult, rtpmaps
from tests.interop.calls.harness import INVITE as _ANY_CODECS_INVITE
from tests.interop.calls.harness import run_sipp as harness_run_sipp

# The harness's INVITE with the front-door tests' fixed offer (PCMU, PCMA, telephone-event).
INVITE = _ANY_CODECS_INVITE.replace("%(formats)s", "0 8 101").replace(
    "%(rtpmaps)s", rtpmaps("0 8 101")
)

HEADER = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="telepath front door">
"""

FOOTER = "</scenario>\n"


# In-dialog request; ``extra`` is zero or more complete header lines, each ending in a newline
# (an empty line would end the header section: on TCP that loses Content-Length, §18.3).
IN_DIALOG = """  <send retrans="500">
    <![CDATA[
      %(method)s [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "Caller" <sip:+15551230000@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:%(user)s@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: %(cseq)d %(method)s
      Max-Forwards: 70
%(extra)s      Content-Length: [len]
%(body)s
    ]]>
  </send>
"""


CANCEL = """  <send>
    <![CDATA[
      CANCEL sip:%(user)s@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-%(offset)d];rport
      From: "Caller" <sip:+15551230000@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:%(user)s@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: %(cseq)d CANCEL
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
"""

OPTIONS = """  <send retrans="500">
    <![CDATA[
      OPTIONS sip:%(user)s@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:monitor@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:%(user)s@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 OPTIONS
      Max-Forwards: 70
      Accept: application/sdp
      Content-Length: 0
    ]]>
  </send>
"""

SDP_BODY = """
      v=0
      o=caller 53655765 %(version)d IN IP4 [local_ip]
      s=-
      c=IN IP4 127.0.0.1
      t=0 0
      m=audio %(media_port)d RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-16
      a=ptime:20
      a=%(direction)s"""


def check(regexp: str, *, header: str | None = None, var: int = 1) -> str:
    """A SIPp action failing the call unless ``regexp`` matches the body (or ``header``)."""
    where = f'search_in="hdr" header="{header}"' if header else 'search_in="body"'
    return f'      <ereg regexp="{regexp}" {where} check_it="true" assign_to="v{var}"/>\n'


def expect(response: int, actions: str = "", extra: str = "") -> str:
    """A ``<recv response=...>`` with optional checks (SIPp reads one ``<action>`` per message,
    so every check goes into the same one)."""
    if not actions:
        return f'  <recv response="{response}"{extra}/>\n'
    return (
        f'  <recv response="{response}"{extra}>\n    <action>\n{actions}    </action>\n  </recv>\n'
    )


def reinvite(user: str, media_port: int, cseq: int, direction: str, answer: str) -> str:
    """An in-dialog re-INVITE with ``a=direction``; its 200 must say ``a=answer``; then ACK."""
    body = SDP_BODY % {"version": cseq, "media_port": media_port, "direction": direction}
    common = {"user": user, "cseq": cseq}
    return (
        IN_DIALOG
        % {
            **common,
            "method": "INVITE",
            "extra": "      Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>\n"
            "      Content-Type: application/sdp\n",
            "body": body,
        }
        + expect(100, extra=' optional="true"')
        + expect(
            200, check(f"a={answer}", var=cseq) + check("m=audio [0-9]+ RTP/AVP 0 ", var=90 + cseq)
        )
        + ACK_2XX % common
    )


def info_dtmf(user: str, cseq: int, signal: str) -> str:
    """An in-dialog INFO with ``application/dtmf-relay`` (the de-facto carrier format)."""
    return IN_DIALOG % {
        "user": user,
        "cseq": cseq,
        "method": "INFO",
        "extra": "      Content-Type: application/dtmf-relay\n",
        "body": f"\n      Signal={signal}\n      Duration=160",
    } + expect(200)


def call(
    user: str,
    media_port: int,
    *,
    hold_ms: int = 500,
    middle: str = "",
    caller_hangs_up: bool = True,
    headers: tuple[str, ...] = (),
    answer_checks: str = "",
) -> str:
    """INVITE → 401 → ACK → INVITE with digest → 200 → ACK → [middle] → BYE (either side).

    ``headers`` are extra header lines of both INVITEs; ``answer_checks`` (``check(...)``)
    apply to the 200 OK."""
    common = {"user": user, "media_port": media_port}
    extra = "".join(f"\n      {h}" for h in headers)
    parts = [
        HEADER,
        INVITE % {**common, "txn": ' start_txn="inv1"', "cseq": 1, "auth": extra},
        expect(100, extra=' optional="true" response_txn="inv1"'),
        '  <recv response="401" auth="true" response_txn="inv1"/>\n',
        ACK_TXN % {**common, "txn": "inv1", "cseq": 1},
        INVITE % {**common, "txn": "", "cseq": 2, "auth": extra + "\n      [authentication]"},
        expect(100, extra=' optional="true"'),
        expect(180, extra=' optional="true"'),
        expect(200, answer_checks, extra=' rrs="true" rtd="true"'),
        ACK_2XX % {"user": user, "cseq": 2},
        middle,
    ]
    if caller_hangs_up:
        parts.append(f'  <pause milliseconds="{hold_ms}"/>\n')
        parts.append(
            IN_DIALOG % {"user": user, "method": "BYE", "cseq": 10, "extra": "", "body": ""}
        )
        parts.append(expect(200))
    else:
        parts.append(f'  <recv request="BYE" timeout="{hold_ms + 15000}"/>\n')
        parts.append(OK_TO_REQUEST)
    parts.append(FOOTER)
    return "".join(parts)


def unchallenged_call(
    user: str,
    media_port: int,
    *,
    hold_ms: int = 500,
    then: str = "",
    caller_hangs_up: bool = True,
) -> str:
    """A carrier that answers no challenge: INVITE → 200 → ACK → (``then``) → BYE (ours, or
    the gateway's when not ``caller_hangs_up``). A 401 fails it. ``then``: in-dialog steps
    (e.g. :func:`reinvite` with CSeq 2-9)."""
    common = {"user": user, "media_port": media_port}
    parts = [
        HEADER,
        INVITE % {**common, "txn": "", "cseq": 1, "auth": ""},
        expect(100, extra=' optional="true"'),
        expect(180, extra=' optional="true"'),
        expect(200, extra=' rrs="true" rtd="true"'),
        ACK_2XX % {"user": user, "cseq": 1},
        f'  <pause milliseconds="{hold_ms}"/>\n',
        then,
    ]
    if caller_hangs_up:
        parts.append(
            IN_DIALOG % {"user": user, "method": "BYE", "cseq": 10, "extra": "", "body": ""}
        )
        parts.append(expect(200))
    else:
        parts.append('  <recv request="BYE" timeout="15000"/>\n')
        parts.append(OK_TO_REQUEST)
    parts.append(FOOTER)
    return "".join(parts)


def _through_challenge(common: dict[str, object]) -> str:
    """INVITE → (100) → 401 → ACK → INVITE with digest → (100): the authenticated INVITE is
    transaction ``inv2``, its 100 optional."""
    return (
        INVITE % {**common, "txn": ' start_txn="inv1"', "cseq": 1, "auth": ""}
        + expect(100, extra=' optional="true" response_txn="inv1"')
        + '  <recv response="401" auth="true" response_txn="inv1"/>\n'
        + ACK_TXN % {**common, "txn": "inv1", "cseq": 1}
        + INVITE
        % {**common, "txn": ' start_txn="inv2"', "cseq": 2, "auth": "\n      [authentication]"}
        + expect(100, extra=' optional="true" response_txn="inv2"')
    )


def rejected_call(user: str, media_port: int, status: int) -> str:
    """INVITE → 401 → ACK → INVITE with digest → ``status`` → ACK (same transaction)."""
    common = {"user": user, "media_port": media_port}
    return (
        HEADER
        + _through_challenge(common)
        + expect(status, extra=' response_txn="inv2"')
        + ACK_TXN % {**common, "txn": "inv2", "cseq": 2}
        + FOOTER
    )


def cancelled_call(user: str, media_port: int) -> str:
    """The authenticated INVITE rings (180), the caller cancels: 200 to CANCEL, 487, ACK."""
    common = {"user": user, "media_port": media_port}
    # Scenario elements: 0 INVITE, 1 100, 2 401, 3 ACK, 4 INVITE, 5 100, 6 180, 7 CANCEL:
    # [branch-3] on the CANCEL repeats the second INVITE's branch (§9.1).
    return (
        HEADER
        + _through_challenge(common)
        + expect(180, extra=' response_txn="inv2"')
        + CANCEL % {"user": user, "cseq": 2, "offset": 3}
        + expect(200, check("CANCEL", header="CSeq:"))
        + expect(487, extra=' response_txn="inv2"')
        + ACK_TXN % {**common, "txn": "inv2", "cseq": 2}
        + FOOTER
    )


def options_ping(user: str) -> str:
    """OPTIONS → 200 (no challenge) with Allow, Accept and Supported."""
    checks = (
        check("INVITE.*BYE.*CANCEL.*OPTIONS.*INFO", header="Allow:", var=1)
        + check("application/sdp", header="Accept:", var=2)
        + check("timer", header="Supported:", var=3)
    )
    return HEADER + OPTIONS % {"user": user} + expect(200, checks) + FOOTER


# Delayed offer (RFC 3261 §13.2.1): an INVITE without SDP; the 200 OK carries the gateway's
# offer and the ACK the caller's answer (or, in the failure case, nothing).
# Delayed offer (RFC 3261 §13.2.1): the INVITE above without its SDP, and the 2xx ACK above
# carrying the caller's answer (any codecs: ``formats``/``rtpmaps``, the harness's helpers).
_CT = "      Content-Type: application/sdp\n"
OFFERLESS_INVITE = INVITE.split(_CT)[0] + "      Content-Length: 0\n    ]]>\n  </send>\n"
_ANSWER = (
    "      Content-Length: [len]\n\n"
    + INVITE.split("      Content-Length: [len]\n\n")[1].split("      m=audio")[0]
    + "      m=audio %(media_port)d RTP/AVP %(formats)s\n%(rtpmaps)s      a=ptime:20\n"
    + "    ]]>\n  </send>\n"
)
ACK_2XX_WITH_ANSWER = ACK_2XX.split("      Content-Length: 0\n")[0] + _CT + _ANSWER


def offerless_call(
    user: str,
    *,
    offer_checks: str = "",
    answer: tuple[int, str] | None,
    hold_ms: int = 500,
    caller_hangs_up: bool = True,
) -> str:
    """INVITE without SDP → 401 → ACK → the same with digest → 200 with the gateway's offer
    (``offer_checks`` run on it) → ACK carrying ``answer`` (media port, formats), or no SDP
    when ``answer`` is None → BYE from the caller after ``hold_ms``, or from the gateway."""
    common = {"user": user}
    parts = [
        HEADER,
        OFFERLESS_INVITE % {**common, "txn": ' start_txn="inv1"', "cseq": 1, "auth": ""},
        expect(100, extra=' optional="true" response_txn="inv1"'),
        '  <recv response="401" auth="true" response_txn="inv1"/>\n',
        ACK_TXN % {**common, "txn": "inv1", "cseq": 1},
        OFFERLESS_INVITE % {**common, "txn": "", "cseq": 2, "auth": "\n      [authentication]"},
        expect(100, extra=' optional="true"'),
        expect(180, extra=' optional="true"'),
        expect(200, offer_checks, extra=' rrs="true" rtd="true"'),
    ]
    if answer is None:
        parts.append(ACK_2XX % {**common, "cseq": 2})
    else:
        port, formats = answer
        parts.append(
            ACK_2XX_WITH_ANSWER
            % {
                **common,
                "cseq": 2,
                "media_port": port,
                "formats": formats,
                "rtpmaps": rtpmaps(formats),
            }
        )
    if caller_hangs_up:
        parts.append(f'  <pause milliseconds="{hold_ms}"/>\n')
        parts.append(IN_DIALOG % {**common, "method": "BYE", "cseq": 10, "extra": "", "body": ""})
        parts.append(expect(200))
    else:
        parts.append(f'  <recv request="BYE" timeout="{hold_ms + 5000}"/>\n')
        parts.append(OK_TO_REQUEST)
    parts.append(FOOTER)
    return "".join(parts)


def _with_references(scenario: str) -> str:
    """Declare the check variables used (SIPp fails a scenario whose variables are set once and
    never read)."""
    names = sorted(set(re.findall(r'assign_to="([^"]+)"', scenario)))
    if not names:
        return scenario
    ref = f'  <Reference variables="{",".join(names)}"/>\n'
    return scenario.replace(FOOTER, ref + FOOTER)


async def run_sipp(
    scenario: str,
    tmp: Path,
    target: tuple[str, int],
    *,
    user: str,
    password: str,
    transport: str = "u1",
    extra: tuple[str, ...] = (),
    timeout_s: float = 30,
) -> SippResult:
    """Run one SIPp call (``-m 1``) against the gateway and wait for it to finish."""
    return await harness_run_sipp(
        _with_references(scenario),
        tmp,
        target,
        user=user,
        password=password,
        transport=transport,
        extra=extra,
        timeout_s=timeout_s,
    )
