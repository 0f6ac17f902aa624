"""A call's media report: where its audio went and came from, what was dropped, and what that
says about one-way audio — the most common failure of SIP trunks (a NAT or firewall on either
side, a wrong address in an SDP), which otherwise takes a packet capture to diagnose.

Pure: the media session's counters and the negotiated addresses in, a JSON-able dict out (the
``media`` object of ``GET /v1/calls/{id}``). Every warning names what was measured, then the
likely cause; none is a guess from one packet.
"""

from __future__ import annotations

from typing import Any

from telepath.addresses import is_private, is_public
from telepath.transport.media_stats import MediaStats

__all__ = ["CALLER_SILENT_REPORTS", "MIN_SECONDS_FOR_SILENCE", "media_report"]

#: A call answered for less than this may end before the caller's first packet: no warning.
MIN_SECONDS_FOR_SILENCE = 1.0

#: The caller's RTCP reports in a row, while we send RTP, without a block for our stream that
#: say it hears none of it (RFC 3550 §6.4; one may just precede our first packet's arrival).
CALLER_SILENT_REPORTS = 3


def _hostport(addr: tuple[str, int] | None) -> str | None:
    if addr is None:
        return None
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def media_report(
    stats: MediaStats,
    *,
    local: tuple[str, int],
    remote_sdp: tuple[str, int] | None,
    remote_rtp: tuple[str, int] | None,
    srtp: str | None,
    answered_s: float,
    signalling: str | None = None,
) -> dict[str, Any]:
    """The report of one ended call's media.

    Args:
        stats: the media session's counters at the end.
        local: our SDP's address and RTP port.
        remote_sdp: where the caller's SDP said to send (None: it gave no usable address).
        remote_rtp: where its RTP came from in the end (the address we latched onto or the SDP
            one), None if none of its packets was accepted.
        srtp: the SRTP suite, None for plain RTP.
        answered_s: how long the call was up.
        signalling: the IP address the caller's INVITE came from (None: unknown).
    """
    received = stats.packets_received
    rtp_from = _hostport(remote_rtp) if received else None
    sdp = _hostport(remote_sdp)
    warnings: list[dict[str, str]] = []
    if received == 0 and answered_s >= MIN_SECONDS_FOR_SILENCE:
        if stats.unauthenticated:
            warnings.append(
                {
                    "code": "srtp_authentication_failed",
                    "message": f"all {stats.unauthenticated} SRTP packets from the caller failed "
                    "authentication: the two sides' keys or crypto suites do not match",
                }
            )
        elif stats.rejected_source:
            warnings.append(
                {
                    "code": "rtp_from_unexpected_address",
                    "message": f"{stats.rejected_source} datagrams reached our RTP port, all "
                    f"from addresses other than the caller's SDP address ({sdp}), and none was "
                    "taken as its media (latching takes one such source, and only for RTP of a "
                    "negotiated payload type)",
                }
            )
        else:
            warnings.append(
                {
                    "code": "no_inbound_rtp",
                    "message": f"no RTP arrived from the caller in {answered_s:.0f} s: a "
                    "firewall or NAT in front of Telepath drops it, or our SDP address "
                    f"({_hostport(local)}) is not one the carrier can reach "
                    "(TELEPATH_PUBLIC_ADDRESS)",
                }
            )
    # On the internet: where its media or SDP says, or where its INVITE came from (a
    # softphone behind its own NAT gives its private address in the SDP).
    seen = [a[0] for a in (remote_rtp, remote_sdp) if a is not None] + [signalling or ""]
    caller = next((ip for ip in seen if is_public(ip)), None)
    if (
        received == 0
        and answered_s >= MIN_SECONDS_FOR_SILENCE
        and caller is not None
        and is_private(local[0])
    ):
        warnings.append(
            {
                "code": "private_address_advertised",
                "message": f"our SDP named {_hostport(local)}, a private address, to a caller "
                f"at {caller} on the internet, which cannot send to it: behind a NAT set "
                "TELEPATH_PUBLIC_ADDRESS to the public address (and forward the RTP ports), or "
                "register the trunk with the carrier",
            }
        )
    if received and rtp_from is not None and sdp is not None and rtp_from != sdp:
        warnings.append(
            {
                "code": "caller_behind_nat",
                "message": f"the caller's RTP came from {rtp_from}, not the SDP address {sdp}: "
                "a NAT on its side; Telepath sent its audio back to where the caller's came from",
            }
        )
    if stats.send_errors:
        warnings.append(
            {
                "code": "media_send_failed",
                "message": f"{stats.send_errors} of our RTP/RTCP datagrams to the caller were "
                "refused by the socket (an address of the other IP family in its SDP, or a "
                "network error): the caller did not get that audio",
            }
        )
    if stats.packets_sent and stats.rtt_ms is not None and stats.remote_loss_fraction >= 0.99:
        warnings.append(
            {
                "code": "caller_hears_nothing",
                "message": "the caller's RTCP reports that none of our RTP arrives (one-way "
                "audio): a firewall or NAT on its side drops it",
            }
        )
    elif stats.packets_sent and stats.remote_reports_without_us >= CALLER_SILENT_REPORTS:
        # The commoner form: a receiver that hears nothing of a source reports no block for it
        # (RFC 3550 §6.4), so there is no loss to read, only reports that leave us out.
        warnings.append(
            {
                "code": "caller_hears_nothing",
                "message": f"the caller's last {stats.remote_reports_without_us} RTCP reports, "
                "sent while we sent RTP, carry no reception report for our stream: none of "
                "our RTP arrives (one-way audio): a firewall or NAT on its side drops it",
            }
        )
    return {
        "local_address": _hostport(local),
        "remote_sdp_address": sdp,
        "remote_rtp_address": rtp_from,
        "srtp": srtp,
        "packets_sent": stats.packets_sent,
        "packets_received": received,
        "packets_lost": stats.packets_lost,
        "late": stats.late,
        "duplicates": stats.duplicates,
        "concealed_frames": stats.concealed_frames,
        "dropped": {
            "rejected_source": stats.rejected_source,
            "unauthenticated": stats.unauthenticated,
            "malformed": stats.malformed,
        },
        "dtmf_received": stats.dtmf_received,
        "send_errors": stats.send_errors,
        "remote_loss_percent": (
            round(stats.remote_loss_fraction * 100, 2) if stats.rtt_ms is not None else None
        ),
        "rtt_ms": None if stats.rtt_ms is None else round(stats.rtt_ms, 1),
        "warnings": warnings,
    }
