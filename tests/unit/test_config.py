"""``Settings`` (telepath/config.py): what it refuses, and how a refusal reads."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from telepath.config import Settings, config_errors

pytestmark = pytest.mark.unit

# 32 bytes, urlsafe base64: a master key's form (TELEPATH_SECRET_KEY).
SECRET_KEY = "c2VjcmV0LWtleS1vZi10aGUtdGVzdC1kby1ub3Qtc2hvdw=="


def refusal(**values: object) -> list[str]:
    """The lines ``telepath`` prints after ``configuration error:`` for these settings."""
    with pytest.raises(ValidationError) as caught:
        Settings(**values)  # type: ignore[arg-type]
    return config_errors(caught.value)


def test_a_model_level_refusal_never_shows_the_secret_key() -> None:
    # pydantic gives a model validator's error the whole input as input_value: the key's start
    with pytest.raises(ValidationError) as caught:
        Settings(stun_server="a b", secret_key=SECRET_KEY)
    assert SECRET_KEY[:6] not in str(caught.value)
    (line,) = config_errors(caught.value)
    assert line.startswith("TELEPATH_STUN_SERVER: ")
    assert SECRET_KEY[:6] not in line


def test_a_field_refusal_names_the_variable_and_the_reason_not_the_value() -> None:
    (line,) = refusal(sip_port=70000, secret_key=SECRET_KEY)
    assert line == "TELEPATH_SIP_PORT: Input should be less than or equal to 65535"
    assert refusal(log_level="LOUD") == [
        "TELEPATH_LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"
    ]


def test_every_refusal_is_listed() -> None:
    lines = refusal(sip_port=-1, http_port=-1)
    assert [line.split(":")[0] for line in lines] == ["TELEPATH_HTTP_PORT", "TELEPATH_SIP_PORT"]


def test_model_level_refusals_name_their_variables() -> None:
    assert refusal(rtp_port_min=30000, rtp_port_max=20000) == [
        "TELEPATH_RTP_PORT_MIN: must be below TELEPATH_RTP_PORT_MAX"
    ]
    (line,) = refusal(dns_servers="10.0.0.2:x")
    assert line.startswith("TELEPATH_DNS_SERVERS: '10.0.0.2:x' is not a DNS server")


def test_jitter_bounds_the_wrong_way_round_are_refused() -> None:
    # rtp/jitter.py refused them when a call's media opened, after the agent had connected
    assert refusal(rtp_jitter_min_ms=100, rtp_jitter_max_ms=60) == [
        "TELEPATH_RTP_JITTER_MIN_MS: must not be above TELEPATH_RTP_JITTER_MAX_MS"
    ]
    assert Settings(rtp_jitter_min_ms=60, rtp_jitter_max_ms=60).rtp_jitter_max_ms == 60
