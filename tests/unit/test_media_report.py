"""The call record's media report (calls/diagnosis.py): counters and addresses in, the report
and its one-way-audio warnings out."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from telepath.api.schemas import CallMedia
from telepath.calls.diagnosis import CALLER_SILENT_REPORTS, media_report
from telepath.transport.media_stats import DirectionStats, MediaStats

pytestmark = pytest.mark.unit

NONE = DirectionStats(0, 0.0, 0.0, 0.0, 0.0)
FLOWING = MediaStats(
    packets_sent=250,
    packets_received=240,
    bytes_received=240 * 160,
    packets_lost=10,
    loss_percent=4.0,
    jitter_ms=1.5,
    late=1,
    duplicates=0,
    concealed_frames=10,
    jitter_buffer_ms=40,
    dtmf_received=2,
    rejected_source=0,
    malformed=0,
    audio_played_ms=4000.0,
    remote_loss_fraction=0.0,
    remote_jitter_ms=0.0,
    rtt_ms=None,
    inbound=NONE,
    outbound=NONE,
)
LOCAL = ("203.0.113.5", 40000)
SDP = ("198.51.100.9", 42000)
SILENT = replace(
    FLOWING,
    packets_received=0,
    bytes_received=0,
    packets_lost=0,
    loss_percent=None,
    jitter_ms=None,
)


def report(stats: MediaStats, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "local": LOCAL,
        "remote_sdp": SDP,
        "remote_rtp": SDP,
        "srtp": None,
        "answered_s": 5.0,
    }
    return media_report(stats, **{**args, **kw})


def codes(found: dict[str, Any]) -> list[str]:
    return [w["code"] for w in found["warnings"]]


def test_a_healthy_call_is_reported_without_warnings() -> None:
    found = report(FLOWING, srtp="AEAD_AES_256_GCM")
    assert found["local_address"] == "203.0.113.5:40000"
    assert found["remote_sdp_address"] == found["remote_rtp_address"] == "198.51.100.9:42000"
    assert (found["packets_sent"], found["packets_received"], found["packets_lost"]) == (
        250,
        240,
        10,
    )
    assert found["srtp"] == "AEAD_AES_256_GCM" and found["dtmf_received"] == 2
    assert found["remote_loss_percent"] is None and found["rtt_ms"] is None  # no RTCP yet
    assert found["warnings"] == []


def test_no_inbound_rtp_names_our_address_and_the_setting() -> None:
    found = report(SILENT, remote_rtp=SDP)
    assert found["remote_rtp_address"] is None  # where we sent is not where it came from
    (warning,) = found["warnings"]
    assert warning["code"] == "no_inbound_rtp"
    assert "203.0.113.5:40000" in warning["message"]
    assert "TELEPATH_PUBLIC_ADDRESS" in warning["message"]
    # a call answered for a moment may end before the first packet: nothing to say
    assert report(SILENT, answered_s=0.5)["warnings"] == []


@pytest.mark.parametrize(
    ("dropped", "code"),
    [
        ({"unauthenticated": 120}, "srtp_authentication_failed"),
        ({"rejected_source": 80}, "rtp_from_unexpected_address"),
    ],
)
def test_the_reason_nothing_was_taken_is_said(dropped: dict[str, int], code: str) -> None:
    (field, count) = next(iter(dropped.items()))
    found = report(
        replace(SILENT, unauthenticated=count)
        if field == "unauthenticated"
        else replace(SILENT, rejected_source=count)
    )
    assert codes(found) == [code]
    assert str(count) in found["warnings"][0]["message"]
    assert found["dropped"] == {
        "rejected_source": 0,
        "unauthenticated": 0,
        "malformed": 0,
        **dropped,
    }


def test_a_caller_behind_a_nat_is_named_with_both_addresses() -> None:
    found = report(FLOWING, remote_rtp=("192.0.2.77", 61000))
    assert codes(found) == ["caller_behind_nat"]
    message = found["warnings"][0]["message"]
    assert "192.0.2.77:61000" in message and "198.51.100.9:42000" in message


def test_rtcp_saying_the_caller_hears_nothing_is_one_way_audio() -> None:
    deaf = replace(FLOWING, remote_loss_fraction=1.0, rtt_ms=42.04)
    found = report(deaf)
    assert codes(found) == ["caller_hears_nothing"]
    assert (found["remote_loss_percent"], found["rtt_ms"]) == (100.0, 42.0)
    assert report(replace(deaf, remote_loss_fraction=0.5))["warnings"] == []


def test_caller_reports_that_never_name_our_stream_are_one_way_audio() -> None:
    """Genuine one-way audio: the caller hears none of our RTP, so its RTCP carries no report
    block for our stream at all (RFC 3550 §6.4: a receiver reports the sources it heard) —
    no loss or round trip to read. Its reports arriving without one, interval after interval
    while we send, are the sign."""
    deaf = replace(FLOWING, remote_reports_without_us=CALLER_SILENT_REPORTS)
    found = report(deaf)
    assert codes(found) == ["caller_hears_nothing"]
    assert f"{CALLER_SILENT_REPORTS} RTCP reports" in found["warnings"][0]["message"]
    assert found["rtt_ms"] is None
    not_yet = replace(deaf, remote_reports_without_us=CALLER_SILENT_REPORTS - 1)
    assert report(not_yet)["warnings"] == []
    assert report(replace(deaf, packets_sent=0))["warnings"] == []


def test_ipv6_addresses_are_bracketed() -> None:
    found = report(
        FLOWING,
        local=("2001:db8::5", 40000),
        remote_sdp=("2001:db8::9", 42000),
        remote_rtp=("2001:db8::9", 42000),
    )
    assert found["local_address"] == "[2001:db8::5]:40000"
    assert found["remote_rtp_address"] == "[2001:db8::9]:42000" and found["warnings"] == []


PUBLIC_CALLER = ("93.184.216.34", 42000)


@pytest.mark.parametrize("ours", ["10.0.0.5", "172.20.1.2", "192.168.1.20", "100.64.0.7"])
def test_a_private_address_in_our_sdp_to_a_caller_on_the_internet_is_named(ours: str) -> None:
    """The commonest cause of no_inbound_rtp: Telepath behind a NAT advertising its own
    address (TELEPATH_PUBLIC_ADDRESS unset): said as the cause, with both addresses."""
    found = report(SILENT, local=(ours, 40000), remote_sdp=PUBLIC_CALLER, remote_rtp=None)
    assert codes(found) == ["no_inbound_rtp", "private_address_advertised"]
    message = found["warnings"][1]["message"]
    assert f"{ours}:40000" in message and "93.184.216.34" in message
    assert "TELEPATH_PUBLIC_ADDRESS" in message


def test_a_caller_on_the_internet_behind_its_own_nat_is_told_by_its_signalling() -> None:
    """A softphone behind its NAT gives its private address in its SDP; where its INVITE came
    from says it is on the internet, which our private address does not reach."""
    found = report(
        SILENT,
        local=("192.168.1.20", 40000),
        remote_sdp=("192.168.0.5", 42000),
        remote_rtp=None,
        signalling="93.184.216.34",
    )
    assert codes(found) == ["no_inbound_rtp", "private_address_advertised"]
    assert "93.184.216.34" in found["warnings"][1]["message"]
    # signalling from the same private network: a LAN PBX, not the explanation
    lan = report(
        SILENT,
        local=("192.168.1.20", 40000),
        remote_sdp=("192.168.0.5", 42000),
        remote_rtp=None,
        signalling="192.168.0.5",
    )
    assert codes(lan) == ["no_inbound_rtp"]


def test_no_private_address_warning_when_it_is_not_the_explanation() -> None:
    private = ("10.0.0.5", 40000)
    # the caller is on the same private network (a PBX on the LAN): it can reach us
    lan = report(SILENT, local=private, remote_sdp=("10.0.9.9", 42000), remote_rtp=None)
    assert codes(lan) == ["no_inbound_rtp"]
    # audio arrived anyway (the carrier latched onto where ours came from): nothing to explain
    flowing = report(FLOWING, local=private, remote_sdp=PUBLIC_CALLER, remote_rtp=PUBLIC_CALLER)
    assert codes(flowing) == []
    # a public address of ours: another cause (a firewall), said by no_inbound_rtp alone
    public = report(
        SILENT, local=("93.184.216.40", 40000), remote_sdp=PUBLIC_CALLER, remote_rtp=None
    )
    assert codes(public) == ["no_inbound_rtp"]
    ipv6 = ("2a00:1450::1", 42000)
    ula = report(SILENT, local=("fd00::5", 40000), remote_sdp=ipv6, remote_rtp=None)
    assert codes(ula) == ["no_inbound_rtp", "private_address_advertised"]


def test_gateway_processing_is_not_measured_without_packets_either_way() -> None:
    assert replace(SILENT, packets_sent=0).gateway_processing_ms is None
    sent_only = replace(SILENT, outbound=DirectionStats(100, 20.0, 18.0, 40.0, 60.0))
    assert sent_only.gateway_processing_ms == pytest.approx(0.02)


def test_sends_the_socket_refused_are_counted_and_warned_about() -> None:
    # logged once per call at WARNING, they were in no record: a caller who heard nothing
    # left a report saying all was sent
    found = report(replace(FLOWING, send_errors=120))
    assert found["send_errors"] == 120
    (warning,) = found["warnings"]
    assert warning["code"] == "media_send_failed"
    assert "120" in warning["message"]
    assert report(FLOWING)["send_errors"] == 0


def test_the_report_is_what_the_api_serves_and_older_ones_still_read() -> None:
    found = report(replace(FLOWING, send_errors=3))
    served = CallMedia.model_validate(found).model_dump()
    assert served == found
    del found["send_errors"]  # a record made before it was counted
    assert CallMedia.model_validate(found).send_errors == 0
