"""``Settings`` (telepath/config.py): what it refuses, and how a refusal reads."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from telepath.config import Settings, config_errors

pytestmark = pytest.mark.unit

# 32 bytes, urlsafe base64: a master key's form (TELEPATH_SECRET_KEY).
SECRET_KEY = "c2VjcmV0LWtleS1vZi10aGUtdGVzdC1ub3Qtc2hvd24="  # "secret-key-of-the-test-not-shown"


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


@pytest.mark.parametrize(
    "value", ["abc", SECRET_KEY[:-8], f"{SECRET_KEY},{SECRET_KEY[:-8]}", "!!!!"]
)
def test_a_master_key_that_is_not_32_bytes_is_refused_unshown(value: str) -> None:
    # it was a traceback once the keyring was loaded (telepath serve: after the settings passed)
    (line,) = refusal(secret_key=value)
    assert line.startswith("TELEPATH_SECRET_KEY: a master key ")
    assert SECRET_KEY[:6] not in line and "abc" not in line


def test_master_keys_as_the_keyring_reads_them_are_taken() -> None:
    for value in ("", SECRET_KEY, f" {SECRET_KEY} , {SECRET_KEY}\n"):
        assert Settings(secret_key=value).secret_key == value


def test_every_refusal_is_listed() -> None:
    lines = refusal(sip_port=-1, http_port=-1)
    assert [line.split(":")[0] for line in lines] == ["TELEPATH_HTTP_PORT", "TELEPATH_SIP_PORT"]


def test_model_level_refusals_name_their_variables() -> None:
    assert refusal(rtp_port_min=30000, rtp_port_max=20000) == [
        "TELEPATH_RTP_PORT_MIN: must be below TELEPATH_RTP_PORT_MAX"
    ]
    (line,) = refusal(dns_servers="10.0.0.2:x")
    assert line.startswith("TELEPATH_DNS_SERVERS: '10.0.0.2:x' is not a DNS server")


def test_every_model_level_refusal_is_listed() -> None:
    # each was raised on its own: an operator fixed one, restarted, and met the next
    assert refusal(
        rtp_port_min=30000, rtp_port_max=20000, rtp_jitter_min_ms=100, stun_server="a b"
    ) == [
        "TELEPATH_RTP_PORT_MIN: must be below TELEPATH_RTP_PORT_MAX",
        "TELEPATH_RTP_JITTER_MIN_MS: must not be above TELEPATH_RTP_JITTER_MAX_MS",
        "TELEPATH_STUN_SERVER: must be host or host:port (an IPv4 address or a DNS name)",
    ]


@pytest.mark.parametrize(
    "domain",
    ["sip.example.com", "localhost", "SIP.Example.COM", "sip.example.com.", "203.0.113.5"]
    + ["[2001:db8::5]", "a-b.example", "x1.example"]
    # a SIP hostport (RFC 3261 §25.1): sip:user@host:5080 is a dialable address, and an
    # installation may have used it as the realm of its stored HA1s
    + ["sip.example.com:5080", "203.0.113.5:5060", "[2001:db8::5]:5061", "localhost:65535"],
)
def test_the_sip_domain_is_kept_as_written(domain: str) -> None:
    # it is the digest realm every stored HA1 was computed with: never rewritten
    assert Settings(sip_domain=domain).sip_domain == domain


@pytest.mark.parametrize(
    "domain",
    ["", "sip example.com", "alice@sip.example.com", "2001:db8::5"]
    + ["-sip.example.com", "sip-.example.com", "sip..example.com", "sip.example.com ", "[bad]"]
    + ['sip"example', "sip.example.123", "sip://example.com"]
    # whitespace anywhere, even inside the brackets (ip_address would strip it)
    + ["[ ::1]", "[::1 ]", "[\t2001:db8::5]", " 203.0.113.5", "203.0.113.5\n"]
    # a port that is no port
    + ["sip.example.com:", "sip.example.com:0", "sip.example.com:65536", "sip.example.com:+5"]
    + ["sip.example.com:5060:5060", "sip.example.com: 5060", "sip.example.com:\u00b2"]
    + ["[2001:db8::5]:", "[2001:db8::5]5060", "2001:db8::5:5060", "[::1%eth0]:5060"],
)
def test_a_sip_domain_that_is_no_host_is_refused(domain: str) -> None:
    # it is the host of every trunk's sip_endpoint (sip:user@domain, RFC 3261 §25.1): a port,
    # a space or a bare IPv6 address there made an address no carrier could dial
    (line,) = refusal(sip_domain=domain)
    assert line.startswith("TELEPATH_SIP_DOMAIN: must be a host name or IP address"), line


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::", "::1", "localhost", "api.lan"])
def test_the_http_host_is_an_address_or_a_name(host: str) -> None:
    assert Settings(http_host=host).http_host == host


@pytest.mark.parametrize(
    "host", ["", "127.0.0.1:8080", "http://127.0.0.1", "[::1]", "my host", "0.0.0.0 "]
)
def test_an_http_host_with_a_port_scheme_or_space_is_refused(host: str) -> None:
    # uvicorn failed on it only after the database was migrated and a key printed
    (line,) = refusal(http_host=host)
    assert line.startswith("TELEPATH_HTTP_HOST: must be an IP address or a host name"), line


def test_jitter_bounds_the_wrong_way_round_are_refused() -> None:
    # rtp/jitter.py refused them when a call's media opened, after the agent had connected
    assert refusal(rtp_jitter_min_ms=100, rtp_jitter_max_ms=60) == [
        "TELEPATH_RTP_JITTER_MIN_MS: must not be above TELEPATH_RTP_JITTER_MAX_MS"
    ]
    assert Settings(rtp_jitter_min_ms=60, rtp_jitter_max_ms=60).rtp_jitter_max_ms == 60


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("", ""),  # unset: the bound address, else this host's primary one
        (" 203.0.113.5 ", "203.0.113.5"),  # a trailing space made every call's SDP fail
        ("2001:DB8::5", "2001:db8::5"),
    ],
)
def test_the_public_address_is_an_ip_address(value: str, kept: str) -> None:
    assert Settings(public_address=value).public_address == kept


@pytest.mark.parametrize(
    "value",
    [
        "203.0.113.5:5060",  # gave c=IN IP6 203.0.113.5:5060 and a Contact with two ports
        "[2001:db8::5]",
        "[2001:db8::5]:5060",
        "gw.example.com",  # SDP c= needs the address; and one per instance anyway
        "0.0.0.0",  # c=IN IP4 0.0.0.0 is "on hold" (RFC 3264 §8.4)
        "::",
        "fe80::1%eth0",
        "203.0.113.5, 203.0.113.6",
    ],
)
def test_a_public_address_with_a_port_or_no_address_is_refused(value: str) -> None:
    (line,) = refusal(public_address=value)
    assert line.startswith("TELEPATH_PUBLIC_ADDRESS: must be the IP address callers reach")


@pytest.mark.parametrize(
    ("value", "kept"),
    [("0.0.0.0", "0.0.0.0"), (" 10.0.0.5 ", "10.0.0.5"), ("::", "::"), ("::1", "::1")],
)
def test_the_sip_host_is_an_ip_address(value: str, kept: str) -> None:
    assert Settings(sip_host=value).sip_host == kept


@pytest.mark.parametrize("value", ["", "localhost", "10.0.0.5:5060", "[::1]", "0.0.0.0/0"])
def test_a_sip_host_that_is_no_ip_address_is_refused(value: str) -> None:
    # bound for SIP and RTP, and advertised in Contact and SDP c= when not a wildcard
    (line,) = refusal(sip_host=value)
    assert line.startswith("TELEPATH_SIP_HOST: must be an IP address to listen on")


def test_a_stun_server_with_spaces_around_it_is_taken() -> None:
    assert Settings(stun_server=" 127.0.0.1:3479 ").stun_server_address == ("127.0.0.1", 3479)


@pytest.mark.parametrize(
    "url",
    [
        "",  # SQLite in the data directory
        "sqlite+aiosqlite:///var/lib/telepath/telepath.db",
        "postgresql+asyncpg://telepath:pw@db.example:5432/telepath?ssl=require",
    ],
)
def test_database_urls_of_the_drivers_telepath_has_are_taken(url: str) -> None:
    assert Settings(database_url=url).database_url == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://telepath:pw-secret@db/telepath", "'postgresql' is not a driver"),
        ("postgres://telepath:pw-secret@db/telepath", "'postgres' is not a driver"),
        ("postgresql+psycopg://telepath:pw-secret@db/t", "'postgresql+psycopg' is not a driver"),
        ("sqlite:///telepath.db", "'sqlite' is not a driver"),
        ("postgresql+asyncpg://telepath:pw-secret@db:port/t", "not a database URL"),
        ("pw-secret", "not a database URL"),
    ],
)
def test_other_database_urls_are_refused_without_being_repeated(url: str, reason: str) -> None:
    (line,) = refusal(database_url=url)
    assert line.startswith(f"TELEPATH_DATABASE_URL: {reason}")
    assert line.endswith(
        "write postgresql+asyncpg://user:password@host/database (asyncpg's "
        "parameters, not libpq's: ?ssl=require) or sqlite+aiosqlite:///path"
    )
    assert "pw-secret" not in line


def test_a_ban_lasts_a_while() -> None:
    # sip/defence.py refuses 0, and did so only when the gateway started, after migrations
    assert refusal(sip_ban_seconds=0) == [
        "TELEPATH_SIP_BAN_SECONDS: Input should be greater than 0"
    ]


# Every float setting; the durations among them (seconds, milliseconds, hours) also have an
# upper bound. An infinite one passed: TELEPATH_WEBHOOK_TIMEOUT_S=inf made the dispatcher's
# lease a timedelta overflow every round (no webhook ever delivered), and
# TELEPATH_CALL_RETENTION_HOURS=inf or TELEPATH_CALL_MAX_DURATION_S=inf killed the retention
# sweep at start.
RATES = ["sip_max_cps", "sip_max_loop_load", "sip_rate_limit_per_s"]
DURATIONS = [
    "database_timeout_s",
    "sip_keepalive_s",
    "sip_overload_lag_ms",
    "sip_overload_wait_ms",
    "sip_drain_timeout_s",
    "sip_bye_wait_s",
    "sip_nonce_ttl_s",
    "sip_auth_failure_window_s",
    "sip_ban_seconds",
    "sip_tcp_idle_s",
    "rtp_inactivity_timeout_s",
    "call_max_duration_s",
    "trunk_recheck_s",
    "provider_timeout_s",
    "agent_reconnect_s",
    "call_retention_hours",
    "lost_instance_after_s",
    "webhook_timeout_s",
    "webhook_backoff_base_s",
    "webhook_poll_s",
]


def test_every_float_setting_is_checked_below() -> None:
    floats = {name for name, field in Settings.model_fields.items() if field.annotation is float}
    assert floats == {*RATES, *DURATIONS}


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
@pytest.mark.parametrize("name", RATES + DURATIONS)
def test_a_float_setting_must_be_finite(name: str, value: str) -> None:
    (line,) = refusal(**{name: value})
    assert line.startswith(f"TELEPATH_{name.upper()}: ")


@pytest.mark.parametrize("name", DURATIONS)
def test_a_duration_has_an_upper_bound(name: str) -> None:
    (line,) = refusal(**{name: "1e11"})
    assert line.startswith(f"TELEPATH_{name.upper()}: Input should be less than or equal to ")


def test_the_session_interval_has_an_upper_bound() -> None:
    # an int, so not among DURATIONS: RFC 4028 §4 allows up to 2**32-1 s; a day is plenty
    assert Settings(sip_session_expires=86400).sip_session_expires == 86400
    (line,) = refusal(sip_session_expires="86401")
    assert line.startswith("TELEPATH_SIP_SESSION_EXPIRES: Input should be less than or equal to ")


def test_the_settings_repr_shows_neither_the_master_key_nor_the_database_password() -> None:
    """A Settings in a traceback's locals or an asyncio 'Exception in callback' line is printed
    by its repr: the master key (every stored secret's key) and the database URL's password were
    in it."""
    key = base64.b64encode(b"k" * 32).decode()
    shown = repr(
        Settings(secret_key=key, database_url="postgresql+asyncpg://u:Pw-Secret-9@db/telepath")
    )
    assert key not in shown
    assert "Pw-Secret-9" not in shown
    assert "http_port" in shown  # the rest is still there
