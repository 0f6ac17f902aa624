"""Settings, read once from ``TELEPATH_*`` environment variables.

Every name here is part of the public contract documented in the README. The hot path receives
the frozen ``Settings`` object (or the values it needs); nothing reads the environment later.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from telepath.errors import ConfigurationError
from telepath.secrets.keyring import parse_keyring

ENV_PREFIX = "TELEPATH_"

#: The SQLAlchemy dialect+driver names of TELEPATH_DATABASE_URL: the async drivers Telepath
#: ships (db/engine.py; its timeouts and transient-error rules are asyncpg's).
DATABASE_DRIVERS = ("postgresql+asyncpg", "sqlite+aiosqlite")


def config_errors(exc: ValidationError) -> list[str]:
    """``exc``'s problems, one line each: ``TELEPATH_X: reason``, never the value.

    A value may be a secret (``TELEPATH_SECRET_KEY``, a database URL's password), and pydantic
    gives a model-level check the whole input as its value: only the variable and the reason
    are said. Model-level messages name their variables themselves (they have no field)."""
    lines: list[str] = []
    for error in exc.errors():
        reason = error["msg"].removeprefix("Value error, ")
        field = error["loc"][0] if error["loc"] else None
        if field is None:  # the model-level check: every problem it found, one per line
            lines.extend(reason.split("\n"))
        else:
            lines.append(f"{ENV_PREFIX}{str(field).upper()}: {reason}")
    return lines


def parse_servers(value: str) -> list[tuple[str, int]]:
    """``"10.0.0.2, 127.0.0.1:5353, [::1]:53"`` → ``[(address, port), ...]`` (port 53 when
    none); raises ``ValueError`` naming the first item that is not an IP address with an
    optional port."""
    servers: list[tuple[str, int]] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        host, port = item, "53"
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ("" if rest else "53")
        elif item.count(":") == 1:
            host, _, port = item.partition(":")
        try:
            address = ipaddress.ip_address(host)
            number = int(port) if port.isdigit() else 0
        except ValueError:
            number = 0
        if not 0 < number < 65536:
            raise ValueError(
                f"{item!r} is not a DNS server: an IP address, optionally with a port "
                "(10.0.0.2, 10.0.0.2:5353, [2001:db8::53]:53)"
            )
        servers.append((str(address), number))
    return servers


# RFC 3261 §25.1: hostname = *( domainlabel "." ) toplabel [ "." ]; a domainlabel is
# alphanumerics with inner hyphens, a toplabel starts with a letter
_HOSTNAME = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?"
)


def sip_host(value: str) -> bool:
    """Whether ``value`` is a SIP URI's host as written (RFC 3261 §25.1: hostname,
    IPv4address or a bracketed IPv6reference) — no port, user, scheme or whitespace (none
    inside the brackets either: ``ip_address`` would strip it)."""
    if any(c.isspace() for c in value):
        return False
    if value.startswith("[") and value.endswith("]"):
        return isinstance(ip_address(value[1:-1]), ipaddress.IPv6Address)
    if isinstance(ip_address(value), ipaddress.IPv4Address):
        return True
    return _HOSTNAME.fullmatch(value) is not None


def sip_hostport(value: str) -> bool:
    """Whether ``value`` is a SIP URI's host with an optional port as written (RFC 3261
    §25.1: hostport = host [ ":" port ]), the port 1 to 65535 in ASCII digits: what follows
    the ``@`` of ``sip:user@host:5080``."""
    host, port = value, None
    if value.startswith("["):  # the IPv6reference's own colons are inside its brackets
        close = value.find("]")
        if close != -1 and close + 1 < len(value):
            host, rest = value[: close + 1], value[close + 1 :]
            if not rest.startswith(":"):
                return False
            port = rest[1:]
    elif value.count(":") == 1:  # a bare IPv6 address has more, and is no host
        host, _, port = value.partition(":")
    if port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        return False
    return sip_host(host)


def ip_address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``value`` (spaces around it dropped) as a plain IP address: None for anything else — a
    name, a port, brackets, a network, an IPv6 zone (``%eth0``)."""
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return None
    return address


class Settings(BaseSettings):
    """All runtime configuration. Field ``x`` is read from ``TELEPATH_X``."""

    # hide_input_in_errors: a refusal's text never carries the input, which for a model-level
    # check is every setting, TELEPATH_SECRET_KEY included (it reached stderr, the journal).
    # allow_inf_nan=False: no float setting may be inf (or nan) — TELEPATH_WEBHOOK_TIMEOUT_S=inf
    # overflowed the dispatcher's lease every round, TELEPATH_CALL_RETENTION_HOURS=inf killed
    # the retention sweep; each duration also has an upper bound (le), documented in the README.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="ignore",
        hide_input_in_errors=True,
        allow_inf_nan=False,
    )

    # --- storage -------------------------------------------------------------------------
    data_dir: Path = Path("./data")
    # empty: sqlite+aiosqlite:///{data_dir}/telepath.db; else one of DATABASE_DRIVERS
    database_url: str = Field(default="", repr=False)  # may hold a password
    # PostgreSQL: the longest a connection attempt or a statement may take before the database
    # counts as unavailable (a server or network gone silent); 0: no limit. Migrations and the
    # retention sweep run without it.
    database_timeout_s: float = Field(default=10.0, ge=0, le=3600)

    # --- HTTP API ------------------------------------------------------------------------
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    api_rate_limit_per_minute: int = Field(default=600, ge=1)
    # failed API key lookups per client address per minute; past it 429 before the lookup
    api_auth_failures_per_minute: int = Field(default=60, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"  # json: one object per line, with call_id

    # --- secrets -------------------------------------------------------------------------
    # base64 (urlsafe or std) of 32 bytes; empty: generated into data_dir. Never in the repr.
    secret_key: str = Field(default="", repr=False)

    # --- SIP -----------------------------------------------------------------------------
    sip_domain: str = "sip.telepath.local"
    sip_host: str = "0.0.0.0"  # an IP address: bound for SIP and RTP
    sip_port: int = Field(default=5060, ge=0, le=65535)
    sip_tls_port: int = Field(default=5061, ge=0, le=65535)
    sip_tls_cert: Path | None = None
    sip_tls_key: Path | None = None
    public_address: str = ""  # an IP address, advertised in Contact and SDP when behind NAT
    # DNS servers for locating registrars (RFC 3263 NAPTR/SRV, then A/AAAA): IP addresses with
    # an optional ":port", comma-separated; empty: the system's (/etc/resolv.conf, and
    # getaddrinfo for addresses)
    dns_servers: str = ""
    # A STUN server ("host[:port]", port 3478) asked, per call, where a NAT maps its RTP port;
    # that mapping goes in the SDP. Empty: none (TELEPATH_PUBLIC_ADDRESS and the RTP port).
    stun_server: str = ""
    # outbound registrations found behind a NAT, and over TCP: a keep-alive this often (0: off)
    sip_keepalive_s: float = Field(default=20.0, ge=0, le=3600)
    sip_enabled: bool = True
    # processes serving SIP and media (one UDP port, calls spread by Call-ID; TCP/TLS: the first)
    sip_workers: int = Field(default=1, ge=1, le=64)
    # SDP answer preference order; names checked by `telepath serve` (cli/preflight.py)
    sip_codecs: str = "G722,PCMU,PCMA"
    sip_max_calls: int = Field(default=500, ge=1)  # admission limit; past it INVITE gets 503
    sip_max_cps: float = Field(default=0.0, ge=0)  # new calls per second; 0: no rate limit
    # loop lag that sheds new calls
    sip_overload_lag_ms: float = Field(default=200.0, gt=0, le=60000)
    # the event-loop thread's CPU share past which new attempts are rate-limited (0: off)
    sip_max_loop_load: float = Field(default=0.97, ge=0, le=1)
    # SIP datagrams waiting this long to be read, for 100 ms on end, shed new calls (503)
    sip_overload_wait_ms: float = Field(default=25.0, gt=0, le=60000)
    # SIGTERM: live calls may finish
    sip_drain_timeout_s: float = Field(default=30.0, ge=0, le=86400)
    # a call we end waits this long for the answer to its BYE, so its record's trace has it
    sip_bye_wait_s: float = Field(default=2.0, ge=0, le=32)
    sip_nonce_ttl_s: float = Field(default=300.0, gt=0, le=86400)
    sip_digest_algorithms: str = "SHA-256,MD5"  # challenge order (RFC 8760 §2.4: preferred first)
    # RFC 4028, when the UAC supports it (§4 allows up to 2**32-1 s; a day is plenty)
    sip_session_expires: int = Field(default=1800, ge=90, le=86400)
    # SRTP (SDES, RFC 4568): "allow" answers RTP/SAVP offers that arrive over TLS, "require"
    # refuses plain RTP (488), "off" refuses SRTP (488)
    sip_srtp: Literal["off", "allow", "require"] = "allow"
    sip_rate_limit_per_s: float = Field(default=50.0, gt=0)  # per source IP
    sip_rate_burst: int = Field(default=200, ge=1)
    sip_auth_failures_before_ban: int = Field(default=10, ge=1)
    sip_auth_failure_window_s: float = Field(default=60.0, gt=0, le=86400)
    # sip/defence.py: a ban lasts a while (30 days at most)
    sip_ban_seconds: float = Field(default=300.0, gt=0, le=2592000)
    sip_allowlist: str = ""  # comma-separated IPs/CIDRs never rate-limited or banned
    # inbound TCP/TLS connections (RFC 3261 §26.1.5): past either cap one is closed at accept
    # (allowlisted sources are held to the total only); mind the open-files limit (ulimit -n)
    sip_tcp_max_connections: int = Field(default=1024, ge=1)
    sip_tcp_max_connections_per_source: int = Field(default=64, ge=1)
    # an inbound connection with no complete message nor CRLF keep-alive (RFC 5626 §3.5.1) for
    # this long is closed, unless a call still signals over it (0: never)
    sip_tcp_idle_s: float = Field(default=300.0, ge=0, le=86400)

    # --- media ---------------------------------------------------------------------------
    rtp_port_min: int = Field(default=20000, ge=1024, le=65534)
    rtp_port_max: int = Field(default=30000, ge=1025, le=65535)
    rtp_inactivity_timeout_s: float = Field(default=30.0, ge=0, le=86400)  # 0 disables
    rtp_jitter_min_ms: int = Field(default=20, ge=1, le=500)
    rtp_jitter_max_ms: int = Field(default=60, ge=1, le=1000)
    # the longest a call may stay up, from the answer (0: no limit); Twilio's cap is also 4 h
    call_max_duration_s: float = Field(default=14400.0, ge=0, le=604800)
    # how often the gateway asks the database whether the trunks of its live calls still exist
    # and are active (0: never; a change through the API of the same process acts at once)
    trunk_recheck_s: float = Field(default=5.0, ge=0, le=3600)

    # --- providers -----------------------------------------------------------------------
    openai_api_base: str = "https://api.openai.com/v1"
    openai_realtime_url: str = "wss://api.openai.com/v1/realtime"
    openai_model: str = "gpt-realtime-2.1"
    elevenlabs_api_base: str = "https://api.elevenlabs.io"
    elevenlabs_ws_url: str = "wss://api.elevenlabs.io/v1/convai/conversation"
    validate_provider_keys: bool = True
    provider_timeout_s: float = Field(default=10.0, gt=0, le=300)
    allow_insecure_agent_urls: bool = False
    # a custom agent with custom_reconnect whose connection dropped is dialled again this long
    agent_reconnect_s: float = Field(default=10.0, gt=0, le=60)

    # --- call records, webhooks ------------------------------------------------------------
    # sip_trace/turns kept this long (10 years at most)
    call_retention_hours: float = Field(default=72.0, ge=0, le=87600)
    # a gateway process whose database heartbeat stopped this long is dead: another closes the
    # records of its calls as lost (cli/instances.py)
    lost_instance_after_s: float = Field(default=60.0, gt=0, le=86400)
    allow_insecure_webhook_urls: bool = False  # allow http:// webhook endpoints (testing only)
    webhook_timeout_s: float = Field(default=30.0, gt=0, le=300)
    webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    # doubles after every failure (up to the 6 h cap between attempts, its upper bound)
    webhook_backoff_base_s: float = Field(default=30.0, gt=0, le=21600)
    webhook_poll_s: float = Field(default=10.0, gt=0, le=3600)  # outbox check when nothing woke it

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        """One of :data:`DATABASE_DRIVERS`, checked here rather than when the engine is made —
        after a master key was generated, with a ModuleNotFoundError for libpq's
        ``postgresql://`` (psycopg). Not rewritten to asyncpg: libpq's query parameters
        (``sslmode``) are not asyncpg's. The URL itself is never repeated (its password)."""
        if not value:
            return value
        forms = (
            "write postgresql+asyncpg://user:password@host/database (asyncpg's parameters, "
            "not libpq's: ?ssl=require) or sqlite+aiosqlite:///path"
        )
        try:
            driver = make_url(value).drivername
        except (ArgumentError, ValueError):  # ValueError: a port that is not a number
            raise ValueError(f"not a database URL; {forms}") from None
        if driver not in DATABASE_DRIVERS:
            raise ValueError(f"{driver!r} is not a driver Telepath has; {forms}")
        return value

    @field_validator("secret_key")
    @classmethod
    def _secret_key(cls, value: str) -> str:
        """Master keys as the keyring reads them (``secrets/keyring.py``), checked here so a
        bad one is a configuration error of every command before anything is opened — it was
        a traceback once the keyring was loaded, for ``telepath serve`` after the database
        was. The reason never carries the value (``hide_input_in_errors`` drops the input)."""
        if value.strip():
            try:
                parse_keyring(value)
            except ConfigurationError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("public_address")
    @classmethod
    def _public_address(cls, value: str) -> str:
        """The address callers are told to reach: in SDP ``c=`` and ``o=`` (an address, IP4 or
        IP6 by its form: RFC 4566 §5.7) and, bracketed when IPv6, in Contact and Via. A port,
        a name or a wildcard there broke every call (found by review)."""
        if not value.strip():
            return ""
        address = ip_address(value)
        if address is None or address.is_unspecified:
            raise ValueError(
                "must be the IP address callers reach this gateway at, such as 203.0.113.5 or "
                "2001:db8::5 (no port, brackets, name or wildcard: it is written into SDP c= "
                "lines and SIP Contact headers)"
            )
        return str(address)

    @field_validator("http_host")
    @classmethod
    def _http_host(cls, value: str) -> str:
        """What uvicorn binds: an address or a name it resolves. A port or a scheme there
        failed only once the database was migrated and the first API key printed."""
        if not (ip_address(value) is not None and value == value.strip()) and (
            _HOSTNAME.fullmatch(value) is None
        ):
            raise ValueError(
                "must be an IP address or a host name to listen on, such as 127.0.0.1, "
                "0.0.0.0, :: or localhost (no port: that is TELEPATH_HTTP_PORT; no scheme)"
            )
        return value

    @field_validator("sip_domain")
    @classmethod
    def _sip_domain(cls, value: str) -> str:
        """The host (and port, if one is given) of every trunk's ``sip_endpoint``
        (``sip:user@domain``) and the digest realm, which every stored HA1 was computed with:
        checked, never rewritten (a changed case or a dropped dot would fail every trunk's
        password)."""
        if not sip_hostport(value):
            raise ValueError(
                "must be a host name or IP address, such as sip.example.com, 203.0.113.5 or "
                "[2001:db8::5], optionally with a port (sip.example.com:5080); no user, scheme "
                "or space: it is the host of every trunk's sip: address and the digest realm"
            )
        return value

    @field_validator("sip_host")
    @classmethod
    def _sip_host(cls, value: str) -> str:
        """SIP and RTP sockets bind it, and unless it is a wildcard it is the advertised
        address too (``cli/gateway.py``): an address, not a name."""
        address = ip_address(value)
        if address is None:
            raise ValueError(
                "must be an IP address to listen on, such as 0.0.0.0 (every IPv4 interface), "
                ":: (every interface) or 10.0.0.5 (no port: that is TELEPATH_SIP_PORT; no name)"
            )
        return str(address)

    @model_validator(mode="after")
    def _check_ranges(self) -> Settings:
        """Checks of several settings together. Every problem is raised at once, one per line
        (``config_errors`` splits them): one at a time, an operator fixed one, restarted, and
        met the next."""
        found: list[str] = []
        if self.rtp_port_min >= self.rtp_port_max:
            found.append("TELEPATH_RTP_PORT_MIN: must be below TELEPATH_RTP_PORT_MAX")
        elif (self.rtp_port_max - self.rtp_port_min + 1) // self.sip_workers < 2:
            found.append("TELEPATH_RTP_PORT_MIN..MAX: too small for TELEPATH_SIP_WORKERS")
        if self.rtp_jitter_min_ms > self.rtp_jitter_max_ms:  # rtp/jitter.py: at a call's media
            found.append("TELEPATH_RTP_JITTER_MIN_MS: must not be above TELEPATH_RTP_JITTER_MAX_MS")
        try:
            parse_servers(self.dns_servers)
        except ValueError as exc:
            found.append(f"TELEPATH_DNS_SERVERS: {exc}")
        if self.stun_server and self.stun_server_address is None:
            found.append(
                "TELEPATH_STUN_SERVER: must be host or host:port (an IPv4 address or a DNS name)"
            )
        if found:
            raise ValueError("\n".join(found))
        return self

    @property
    def stun_server_address(self) -> tuple[str, int] | None:
        """``TELEPATH_STUN_SERVER`` as (host, port) (3478 when none given); None if unset or
        not of that form."""
        host, sep, port = self.stun_server.strip().partition(":")
        if not host or any(c.isspace() or c in "[]/@" for c in host):
            return None
        if not sep:
            return host, 3478
        number = int(port) if port.isdigit() else 0
        return (host, number) if 0 < number < 65536 else None

    @property
    def dns_server_list(self) -> list[tuple[str, int]] | None:
        """``TELEPATH_DNS_SERVERS`` as (host, port) pairs; None: the system's."""
        return parse_servers(self.dns_servers) or None

    @property
    def effective_database_url(self) -> str:
        """The SQLAlchemy URL in use: the configured one, else SQLite in the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'telepath.db').resolve()}"
