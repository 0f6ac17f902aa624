"""ORM models: accounts, API keys, trunks, call records, webhooks and gateway processes.

Secrets columns hold only what is safe at rest: SIP digest HA1 values (never the password),
AES-256-GCM envelopes for provider keys, custom headers and registration passwords (see
``telepath.secrets.keyring``), and SHA-256 hashes of API keys.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from telepath.db.base import Base, UTCDateTime


class Account(Base):
    """A tenant: owns API keys and trunks and sees nothing else."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKey(Base):
    """An API key; only its SHA-256 is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Trunk(Base):
    """A SIP identity linked to an AI provider configuration."""

    __tablename__ = "trunks"
    __table_args__ = (Index("ix_trunks_account_created", "account_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    ai_provider: Mapped[str] = mapped_column(String(16))
    # The SIP address user part: unique across the installation, not just the account.
    sip_username: Mapped[str] = mapped_column(String(30))
    sip_realm: Mapped[str] = mapped_column(String(255))
    ha1_md5: Mapped[str] = mapped_column(String(32))
    ha1_sha256: Mapped[str] = mapped_column(String(64))
    password_rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    openai_api_key_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    openai_api_key_hint: Mapped[str | None] = mapped_column(String(32), nullable=True)
    openai_model: Mapped[str | None] = mapped_column(String(100), nullable=True)
    openai_voice: Mapped[str | None] = mapped_column(String(50), nullable=True)
    elevenlabs_api_key_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    elevenlabs_api_key_hint: Mapped[str | None] = mapped_column(String(32), nullable=True)
    elevenlabs_agent_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    custom_endpoint: Mapped[str | None] = mapped_column(Text, nullable=True)
    custom_protocol: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # a dropped agent connection is dialled again (telepath protocol only); NULL: no
    custom_reconnect: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    custom_headers_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    system_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Digest algorithms challenged for this trunk, preferred first ("MD5", "SHA-256,MD5"...);
    # None: TELEPATH_SIP_DIGEST_ALGORITHMS.
    sip_digest_algorithms: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Where the trunk's INVITEs and REGISTERs may come from: canonical networks, comma-separated
    # ("203.0.113.0/24,2001:db8::/32"); None: any source.
    allowed_addresses: Mapped[str | None] = mapped_column(Text, nullable=True)
    # How its INVITEs authenticate: None or "digest" (a challenge), or "address" (taken without a
    # challenge from allowed_addresses for one of its inbound numbers: carriers that do not
    # answer challenges, e.g. Twilio Elastic SIP Trunking origination).
    sip_auth: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # The called numbers it serves, canonical E.164, comma-separated ("+14155550100,..."); None:
    # any. The same numbers are rows of ``trunk_numbers`` (unique: the routing index).
    inbound_numbers: Mapped[str | None] = mapped_column(Text, nullable=True)
    allowed_caller_numbers: Mapped[str | None] = mapped_column(Text, nullable=True)
    # SRTP for its calls: "allowed", "required" or "disabled"; None: TELEPATH_SIP_SRTP.
    media_encryption: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Codecs for its calls, preferred first ("PCMA,PCMU"); None: TELEPATH_SIP_CODECS.
    codecs: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # SIP headers of its INVITEs passed on to its agent ("X-Customer-Id,..."); None: none.
    forward_sip_headers: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Its outbound registration, if any: loaded with the trunk (one join), deleted with it.
    registration: Mapped[TrunkRegistration | None] = relationship(
        lazy="joined", cascade="all, delete-orphan", passive_deletes=True
    )


# SIP usernames are unique regardless of case, so "Agent-1" cannot shadow "agent-1".
Index("uq_trunks_sip_username_ci", func.lower(Trunk.sip_username), unique=True)


class TrunkNumber(Base):
    """One called number a trunk serves: unique across the installation, since an INVITE for a
    number is routed by it (``trunks.inbound_numbers`` holds the same list for reading)."""

    __tablename__ = "trunk_numbers"

    number: Mapped[str] = mapped_column(String(16), primary_key=True)  # "+" and 1-15 digits
    trunk_id: Mapped[str] = mapped_column(ForeignKey("trunks.id", ondelete="CASCADE"), index=True)


class TrunkRegistration(Base):
    """A trunk's outbound registration: Telepath registers with the carrier as a SIP client
    (RFC 3261 §10.2). The password is an AES-GCM envelope (``REGISTRATION_PASSWORD``)."""

    __tablename__ = "trunk_registrations"

    trunk_id: Mapped[str] = mapped_column(
        ForeignKey("trunks.id", ondelete="CASCADE"), primary_key=True
    )
    registrar: Mapped[str] = mapped_column(String(255))  # "sip:host[:port]", normalised
    username: Mapped[str] = mapped_column(String(64))
    auth_username: Mapped[str | None] = mapped_column(String(64), nullable=True)
    domain: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # every REGISTER goes through it (RFC 3261 §8.1.2): "sip:host[:port][;transport=…]"
    outbound_proxy: Mapped[str | None] = mapped_column(String(255), nullable=True)
    expires: Mapped[int] = mapped_column(Integer)
    password_enc: Mapped[str] = mapped_column(Text)
    # The registered contact's user part ("tpr-" and 20 hex digits): an INVITE to it is this
    # trunk's. Never shown in the API; kept when the settings change.
    contact_user: Mapped[str] = mapped_column(String(32), unique=True)
    # "pending", "registered", "failed" or "unregistered", as call control last reported it.
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    status_detail: Mapped[str | None] = mapped_column(String(200), nullable=True)
    registered_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # host:port of the contact registered (behind a NAT, the address the registrar saw)
    contact_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    @property
    def registrar_host(self) -> str:
        """The registrar's host, without port or brackets: ``sip:[2001:db8::1]:5070`` →
        ``2001:db8::1``."""
        return uri_host(self.registrar)

    @property
    def proxy_host(self) -> str | None:
        """The outbound proxy's host (as ``registrar_host``), if it has one."""
        return None if self.outbound_proxy is None else uri_host(self.outbound_proxy)

    @property
    def streamed(self) -> bool:
        """Whether its REGISTERs' first hop (the outbound proxy, else the registrar) is named
        over TCP or TLS (both URIs are stored normalised: lower-case scheme and transport)."""
        hop = self.outbound_proxy or self.registrar
        return hop.startswith("sips:") or hop.endswith((";transport=tcp", ";transport=tls"))


def uri_host(uri: str) -> str:
    """The host of a normalised ``sip:host[:port][;params]`` URI, without port or brackets."""
    hostport = uri.split(":", 1)[1].split(";", 1)[0]
    if hostport.startswith("["):
        return hostport[1 : hostport.index("]")]
    return hostport.split(":", 1)[0]


# Encrypted trunk columns: logical name -> attribute holding the AES-GCM envelope.
TRUNK_SECRET_COLUMNS = {
    "openai_api_key": "openai_api_key_enc",
    "elevenlabs_api_key": "elevenlabs_api_key_enc",
    "custom_headers": "custom_headers_enc",
}


# The column name a registration password's envelope is bound to (``trunk_secret_context``).
REGISTRATION_PASSWORD = "registration_password"


def trunk_secret_context(trunk_id: str, column: str) -> str:
    """Associated data binding an encrypted value to its trunk and column."""
    return f"trunk:{trunk_id}:{column}"


class CallRow(Base):
    """One call record (``GET /v1/calls``). Outlives its trunk: ``trunk_id`` is not a foreign key.

    ``sip_trace`` and ``turns`` are the per-call detail purged after the retention period
    (``detail_purged_at`` is then set); the aggregate columns are kept.
    """

    __tablename__ = "calls"
    __table_args__ = (
        Index("ix_calls_account_start", "account_id", "start_time"),
        # A trunk's calls by start: GET /v1/calls?trunk_id=, and each listed trunk's calls of
        # today (GET /v1/trunks metrics: one range scan per trunk).
        Index("ix_calls_account_trunk_start", "account_id", "trunk_id", "start_time"),
        Index("ix_calls_end_time", "end_time"),
        # The records whose detail the retention sweep may still purge, by end. Partial: a
        # purged record stays past the cutoff for good (its aggregates are kept), and the sweep
        # must not read all past calls every round to skip them.
        Index(
            "ix_calls_unpurged_end",
            "end_time",
            sqlite_where=text("detail_purged_at IS NULL"),
            postgresql_where=text("detail_purged_at IS NULL"),
        ),
        # Open records by the process that holds them: a process that died leaves some, which
        # its successor closes at once (``close_instance_calls``). Partial: ended calls are
        # the bulk of the table and are never looked up this way.
        Index(
            "ix_calls_open_instance",
            "instance_id",
            sqlite_where=text("end_time IS NULL"),
            postgresql_where=text("end_time IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    trunk_id: Mapped[str] = mapped_column(String(40))
    from_number: Mapped[str | None] = mapped_column(String(128), nullable=True)
    to_number: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    ai_provider: Mapped[str] = mapped_column(String(16))
    start_time: Mapped[datetime] = mapped_column(UTCDateTime())
    answer_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    duration_seconds: Mapped[int] = mapped_column(Integer, default=0)
    disconnect_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    carrier_lag_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    ai_latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gateway_processing_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    gateway_processing_p99_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    packet_loss_percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    jitter_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    codec_used: Mapped[str | None] = mapped_column(String(16), nullable=True)
    setup_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    turns: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    sip_trace: Mapped[str | None] = mapped_column(Text, nullable=True)
    media: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # a detail
    detail_purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The gateway process that carried the call (``cli/instances.py``); never shown in the API.
    instance_id: Mapped[str | None] = mapped_column(String(40), nullable=True)


class GatewayInstance(Base):
    """A running gateway process's heartbeat (``cli/instances.py``): a row that stops beating
    belongs to a process that died, whose open call records another process then closes."""

    __tablename__ = "gateway_instances"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # calls.instance_id
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())  # the process's own clock
    beats: Mapped[int] = mapped_column(Integer)  # compared, not the clocks: hosts may disagree


class WebhookEndpoint(Base):
    """An account's webhook subscription; the signing secret is an AES-GCM envelope."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_account_created", "account_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON)
    secret_enc: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookDelivery(Base):
    """The durable outbox: one row per (event, endpoint), retried until delivered or failed."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_deliveries_endpoint_event"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        # settled rows by their last attempt: the retention sweep's prune (one range a status)
        Index("ix_webhook_deliveries_settled", "status", "last_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    account_id: Mapped[str] = mapped_column(String(40))
    event_id: Mapped[str] = mapped_column(String(40))  # evt_...: the receiver's idempotency key
    event: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


def webhook_secret_context(endpoint_id: str) -> str:
    """Associated data binding an encrypted signing secret to its endpoint."""
    return f"webhook:{endpoint_id}:secret"
