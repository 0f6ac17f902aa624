"""Pydantic models that document request and response bodies in the OpenAPI spec.

Responses are built from these models. Request bodies are validated by ``trunk_input`` (for the
seed's exact error codes); the request models here mirror those rules for the spec and clients.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Provider = Literal["openai", "elevenlabs", "custom"]
TrunkStatus = Literal["active", "inactive", "error"]
CustomProtocol = Literal["telepath", "twilio"]


RegistrationStatus = Literal["pending", "registered", "failed", "unregistered"]


class RegistrationSettings(BaseModel):
    """A trunk's outbound registration: Telepath registers with your carrier or PBX as a SIP
    client (RFC 3261 §10.2), so that its calls reach Telepath behind NAT."""

    model_config = ConfigDict(extra="forbid")

    registrar: str = Field(
        max_length=255,
        description="The registrar: sip:host or sip:host:port (a DNS name, IPv4 address or "
        "[IPv6]), no user part; ';transport=tcp' or ';transport=tls' (or sips:) for TCP or "
        "TLS. A DNS name without a port is located by its NAPTR and SRV records (RFC 3263)",
        examples=["sip:sip.carrier.example:5060"],
    )
    username: str = Field(
        min_length=1,
        max_length=64,
        description="The address-of-record's user (sip:username@domain), and the digest's "
        'unless auth_username is set; printable ASCII without spaces, @, :, <, >, " or ;',
    )
    password: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="The digest password (stored encrypted, never returned). Required for a "
        "new registration; omitted in a PATCH: the stored one is kept",
    )
    auth_username: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="The digest username when it is not username (same characters)",
    )
    domain: str | None = Field(
        None,
        max_length=255,
        description="The address-of-record's domain when it is not the registrar's host: a DNS "
        "name or IP address",
    )
    outbound_proxy: str | None = Field(
        None,
        max_length=255,
        description="An outbound proxy every REGISTER goes through (with a Route header naming "
        "it), as SIP phones have: a URI of the registrar's form (';lr' may be given: it is "
        "always sent); its transport is the registration's. Calls from its addresses are the "
        "registration's, as from the registrar's",
        examples=["sip:proxy.carrier.example:5080"],
    )
    expires: int | None = Field(
        None, ge=60, le=86400, description="Registration interval asked for, seconds (300)"
    )


class Registration(BaseModel):
    """A trunk's outbound registration as read: never the password."""

    registrar: str
    username: str
    auth_username: str | None = None
    domain: str | None = None
    outbound_proxy: str | None = None
    expires: int
    status: RegistrationStatus = Field(
        description="'pending' (new or changed, not yet reported), 'registered', 'failed' "
        "(status_detail says why) or 'unregistered' (also a registration past its "
        "registered_until that no gateway refreshed)"
    )
    status_detail: str | None = Field(None, examples=["403 Forbidden", "no response"])
    registered_until: str | None = Field(
        None, description="ISO 8601, UTC: when the current registration expires"
    )
    contact_address: str | None = Field(
        None,
        description="host:port registered as the trunk's contact, where the registrar sends "
        "its calls: behind a NAT, the public address the registrar saw (null unless registered)",
        examples=["203.0.113.5:40001"],
    )


class _TrunkSettings(BaseModel):
    """Optional SIP and media settings of a trunk, the same in create and update bodies."""

    model_config = ConfigDict(extra="forbid")

    sip_digest_algorithms: str | None = Field(
        None,
        max_length=32,
        description="Digest algorithms to challenge with, preferred first: 'SHA-256,MD5' "
        "(default: TELEPATH_SIP_DIGEST_ALGORITHMS), or 'MD5' for carriers and devices that "
        "abort on a SHA-256 challenge",
    )
    allowed_addresses: list[str] | None = Field(
        None,
        max_length=32,
        description="Source addresses or networks (CIDR) this trunk's INVITEs and REGISTERs may "
        "come from, e.g. your carrier's published signalling ranges; the digest check still "
        "applies. Empty or absent: any source",
        examples=[["203.0.113.0/24", "198.51.100.7"]],
    )
    sip_auth: Literal["digest", "address"] | None = Field(
        None,
        description="How the trunk's INVITEs authenticate: 'digest' (default: a challenge for "
        "sip_username and sip_password) or 'address' (no challenge: calls to one of "
        "inbound_numbers from one of allowed_addresses are taken as they come, for carriers "
        "that do not answer challenges, such as Twilio Elastic SIP Trunking; both lists must "
        "be set). REGISTER always uses the digest",
    )
    inbound_numbers: list[str] | None = Field(
        None,
        max_length=100,
        description="The called numbers (E.164) this trunk serves; each may belong to one trunk "
        "only. An INVITE whose Request-URI (or else To) names one of them is routed to this trunk; "
        "when set, a call to another number is refused (404). Empty or absent: any number",
        examples=[["+14155550100"]],
    )
    allowed_caller_numbers: list[str] | None = Field(
        None,
        max_length=100,
        description="The caller numbers (E.164, the From URI's user) that may call this trunk; "
        "when set, any other caller — anonymous ones too — is refused with 403 once the trunk "
        "is known. Empty or absent: any caller",
        examples=[["+14155550123"]],
    )
    media_encryption: Literal["allowed", "required", "disabled"] | None = Field(
        None,
        description="SRTP (SDES, over TLS signalling) for this trunk's calls: 'allowed' (SRTP or "
        "plain RTP, as the carrier offers), 'required' (plain RTP refused with 488) or 'disabled' "
        "(SRTP offers refused); absent or null: the installation's TELEPATH_SIP_SRTP",
    )
    codecs: list[Literal["G722", "PCMU", "PCMA"]] | None = Field(
        None,
        max_length=3,
        description="Codecs for this trunk's calls, preferred first: G722, PCMU, PCMA (e.g. "
        "['PCMA'] for a carrier whose G.722 is broken); absent or null: TELEPATH_SIP_CODECS",
        examples=[["PCMU", "PCMA"]],
    )
    forward_sip_headers: list[str] | None = Field(
        None,
        max_length=20,
        description="Names of INVITE headers passed on to the agent (e.g. X-Customer-Id from "
        "your PBX): a custom agent's start.call.sip_headers, a Twilio-protocol agent's "
        "customParameters, ElevenLabs dynamic variables sip_<name> (lower case, '-' as '_'); "
        "not sent to OpenAI. Authorization, Proxy-Authorization, Via, Route, Record-Route and "
        "Max-Forwards cannot be",
        examples=[["X-Customer-Id"]],
    )
    registration: RegistrationSettings | None = Field(
        None,
        description="Register with your carrier or PBX as a SIP client so its calls reach "
        "Telepath behind NAT; null in a PATCH removes it. An object given in a PATCH replaces "
        "the settings",
    )


class TrunkCreate(_TrunkSettings):
    """Body of ``POST /v1/trunks`` (the seed's fields plus optional provider settings)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="Friendly name")
    ai_provider: Provider
    sip_username: str = Field(
        pattern=r"^[A-Za-z0-9-]{3,30}$",
        description="Unique SIP username: alphanumeric characters and hyphens, 3-30 characters",
    )
    sip_password: str = Field(min_length=8, max_length=128, description="SIP digest password")
    openai_api_key: str | None = Field(None, description="Required when ai_provider is openai")
    openai_model: str | None = Field(
        None, max_length=100, description="Realtime model (default gpt-realtime-2.1)"
    )
    openai_voice: str | None = Field(
        None,
        max_length=50,
        description="Realtime voice: a built-in name (default marin) or a custom voice_... id",
    )
    elevenlabs_api_key: str | None = Field(
        None, description="Required when ai_provider is elevenlabs"
    )
    elevenlabs_agent_id: str | None = Field(
        None, description="Required when ai_provider is elevenlabs"
    )
    custom_endpoint: str | None = Field(
        None, description="wss:// URL of your agent; required when ai_provider is custom"
    )
    custom_protocol: CustomProtocol | None = Field(
        None, description="Wire protocol of a custom agent (default telepath)"
    )
    custom_headers: dict[str, str] | None = Field(
        None, description="Headers sent on the agent WebSocket handshake (stored encrypted)"
    )
    custom_reconnect: bool | None = Field(
        None,
        description="Dial a custom agent again when its connection drops mid-call (telepath "
        "protocol only; default false)",
    )
    system_prompt: str | None = Field(None, max_length=32000)


class TrunkUpdate(_TrunkSettings):
    """Body of ``PATCH /v1/trunks/{id}``: only the fields present change."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    status: Literal["active", "inactive"] | None = None
    openai_api_key: str | None = None
    openai_model: str | None = Field(None, max_length=100)
    openai_voice: str | None = Field(None, max_length=50)
    elevenlabs_api_key: str | None = None
    elevenlabs_agent_id: str | None = None
    custom_endpoint: str | None = None
    custom_protocol: CustomProtocol | None = None
    custom_headers: dict[str, str] | None = None
    custom_reconnect: bool | None = None
    system_prompt: str | None = Field(None, max_length=32000)


class TrunkCreated(BaseModel):
    """The seed's create response, field for field."""

    id: str = Field(examples=["conn_01jdq3v7w5x8y9z0a1b2c3d4e5"])
    name: str
    status: TrunkStatus
    ai_provider: Provider
    sip_username: str
    sip_endpoint: str = Field(description="{sip_username}@{TELEPATH_SIP_DOMAIN}")
    created_at: str = Field(description="ISO 8601, UTC")


class TrunkMetrics(BaseModel):
    """Today's calls of a trunk (``reference/telepath-product.md`` §1.2), from its call records.

    "Today" is the current UTC day, since 00:00 UTC; the calls are the trunk's records whose
    ``start_time`` is in it, whatever their status.
    """

    calls_today: int = Field(
        description="Calls to this trunk that started today (since 00:00 UTC), including those "
        "still in progress and those that failed",
        examples=[142],
    )
    success_rate: float = Field(
        ge=0,
        le=100,
        description="Percentage (0-100, one decimal) of today's ended calls that did not fail. "
        "A call failed when its status is 'failed' (the caller never got the agent) or "
        "'disconnected' (answered, then cut by a failure: disconnect_reason "
        "'ai_provider_error', 'carrier_error', 'lost' or 'unknown'); one that ended normally "
        "is 'connected'. Calls still in progress are not counted yet. 100 when no call has "
        "ended today (none failed)",
        examples=[97.2],
    )
    avg_latency_ms: int = Field(
        description="Mean agent response time (each call's ai_latency_ms: the agent's mean "
        "time from the caller's end of speech to its first audio) over today's calls that "
        "measured one, rounded to whole milliseconds; 0 when none did",
        examples=[245],
    )


KEY_HINT = (
    "The stored key, masked to at most a quarter of it: its first 3 and last 4 characters "
    "(sk-...c123) when it has 28 or more, its last 4 (...c123) from 16, else ****"
)


class Trunk(TrunkCreated):
    """A trunk as read back. Secrets appear only as masked hints."""

    updated_at: str
    system_prompt: str | None = None
    openai_api_key_hint: str | None = Field(None, description=KEY_HINT, examples=["sk-...c123"])
    openai_model: str | None = None
    openai_voice: str | None = None
    elevenlabs_api_key_hint: str | None = Field(None, description=KEY_HINT, examples=["sk_...9f3e"])
    elevenlabs_agent_id: str | None = None
    custom_endpoint: str | None = None
    custom_protocol: CustomProtocol | None = None
    custom_header_names: list[str] | None = Field(
        None, description="Names of the stored custom headers (values are never returned)"
    )
    custom_reconnect: bool | None = Field(
        None, description="Custom agents: whether a dropped connection is dialled again"
    )
    password_rotated_at: str | None = None
    sip_digest_algorithms: str | None = None
    allowed_addresses: list[str] | None = Field(
        None, description="Canonical networks (a single address as /32 or /128); null: any"
    )
    sip_auth: Literal["digest", "address"] = "digest"
    inbound_numbers: list[str] | None = Field(
        None, description="Canonical E.164 numbers this trunk serves; null: any"
    )
    allowed_caller_numbers: list[str] | None = Field(
        None, description="Canonical E.164 numbers that may call this trunk; null: any"
    )
    media_encryption: Literal["allowed", "required", "disabled"] | None = Field(
        None, description="null: the installation's TELEPATH_SIP_SRTP"
    )
    codecs: list[Literal["G722", "PCMU", "PCMA"]] | None = Field(
        None, description="Preferred first; null: the installation's TELEPATH_SIP_CODECS"
    )
    forward_sip_headers: list[str] | None = None
    registration: Registration | None = Field(
        None, description="The outbound registration and its state; null: none"
    )
    metrics: TrunkMetrics = Field(description="Today's calls, success rate and agent latency")


class Pagination(BaseModel):
    """Offset pagination block of list responses."""

    limit: int
    offset: int
    total: int


class TrunkList(BaseModel):
    """``GET /v1/trunks`` response."""

    trunks: list[Trunk]
    pagination: Pagination


class PasswordRotated(BaseModel):
    """``POST /v1/trunks/{id}/rotate-password`` response: the only time the password is shown."""

    id: str
    sip_username: str
    sip_password: str
    rotated_at: str


CallStatus = Literal["connected", "disconnected", "failed"]
CALL_STATUS_DESCRIPTION = (
    "The call's final status: 'connected' (Completed) answered, and still up (no end_time) or "
    "ended normally; 'disconnected' (Dropped) answered, then cut by a failure "
    "(ai_provider_error, carrier_error, lost, unknown); 'failed' never answered"
)


class CallMetrics(BaseModel):
    """Per-call measurements, all taken at the gateway (null when not measured)."""

    carrier_lag_ms: int | None = Field(None, description="INVITE received to first caller RTP")
    ai_latency_ms: int | None = Field(None, description="Mean agent response time over turns")
    gateway_processing_ms: int | None = Field(
        None,
        description="Mean per-packet gateway time, rounded to whole milliseconds (usually 0: "
        "see gateway_processing_us); null: no packet either way",
        examples=[0],
    )
    gateway_processing_us: int | None = Field(
        None,
        description="The same mean in whole microseconds (an extension: the precise value)",
        examples=[187],
    )
    gateway_processing_p99_ms: float | None = Field(
        None,
        description="p99 of the per-packet gateway time, in milliseconds to 3 decimals (an "
        "extension); null: no packet either way",
        examples=[0.31],
    )
    packet_loss_percent: float | None = Field(
        None,
        description="Loss of the caller's RTP, percent of expected packets (RFC 3550's, "
        "duplicates not counted as received); null: none of it arrived",
    )
    jitter_ms: int | None = Field(
        None,
        description="Average RTP jitter: the mean over the call of the RFC 3550 interarrival "
        "jitter estimate, rounded to whole milliseconds; null: no RTP from the caller arrived",
        examples=[12],
    )
    jitter_us: int | None = Field(
        None,
        description="The same jitter in microseconds (an extension: the precise value, "
        "measured to 10 µs)",
        examples=[12480],
    )
    codec_used: str | None = Field(None, examples=["PCMU", "PCMA", "G722"])
    setup_ms: int | None = Field(None, description="INVITE received to 200 OK sent")


class CallTurn(BaseModel):
    """One conversational turn."""

    turn_number: int
    speaker: Literal["caller", "agent"]
    duration_ms: int
    processing_time_ms: int


class CallSummary(BaseModel):
    """A call as listed by ``GET /v1/calls``."""

    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(examples=["call_01jdq3v7w5x8y9z0a1b2c3d4e5"])
    trunk_id: str
    from_: str | None = Field(
        None,
        alias="from",
        description="Caller number: the From user part, as canonical E.164 when it is one "
        "(as allowed_caller_numbers match it), else as sent",
    )
    to: str | None = Field(
        None,
        description="Called number as routing saw it (Request-URI, else To; canonical E.164), "
        "else the Request-URI's user part as sent",
    )
    status: CallStatus = Field(description=CALL_STATUS_DESCRIPTION)
    duration_seconds: int = Field(description="Answer to end, whole seconds")
    start_time: str = Field(description="ISO 8601, UTC")
    end_time: str | None = None
    disconnect_reason: str | None = None
    carrier_lag_ms: int | None = None
    ai_latency_ms: int | None = None
    gateway_processing_ms: int | None = Field(
        None, description="Whole milliseconds (see gateway_processing_us); null: no packet"
    )
    gateway_processing_us: int | None = Field(
        None, description="The same mean per-packet gateway time in whole microseconds"
    )


class MediaWarning(BaseModel):
    """Something the call's media counters show, with its likely cause."""

    code: Literal[
        "no_inbound_rtp",
        "rtp_from_unexpected_address",
        "srtp_authentication_failed",
        "caller_behind_nat",
        "caller_hears_nothing",
        "private_address_advertised",
        "media_send_failed",
    ]
    message: str


class MediaDropped(BaseModel):
    """Datagrams the call's media socket dropped, by reason."""

    rejected_source: int
    unauthenticated: int
    malformed: int


class CallMedia(BaseModel):
    """A call's media report (null while the call is up, and past the retention period)."""

    local_address: str = Field(description="Our SDP's address and RTP port")
    remote_sdp_address: str | None = Field(description="Where the caller's SDP said to send")
    remote_rtp_address: str | None = Field(
        description="Where the caller's RTP came from (null: none was accepted)"
    )
    srtp: str | None = Field(description="The SRTP crypto suite; null for plain RTP")
    packets_sent: int
    packets_received: int
    packets_lost: int
    late: int
    duplicates: int
    concealed_frames: int
    dropped: MediaDropped
    dtmf_received: int
    send_errors: int = Field(
        0,
        description="Our RTP/RTCP datagrams to the caller the socket refused to send (0 in "
        "records made before it was counted)",
    )
    remote_loss_percent: float | None = Field(
        description="Loss of our stream as the caller's RTCP last reported it"
    )
    rtt_ms: float | None = Field(description="Round-trip time from RTCP")
    warnings: list[MediaWarning]


class CallDetail(BaseModel):
    """``GET /v1/calls/{id}``: the record with metrics, turns and the SIP trace.

    Past the retention period (``TELEPATH_CALL_RETENTION_HOURS``) ``turns`` is empty,
    ``sip_trace`` is null and ``detail_purged_at`` is set.
    """

    model_config = ConfigDict(populate_by_name=True)

    id: str
    trunk_id: str
    from_: str | None = Field(None, alias="from")
    to: str | None = None
    status: CallStatus = Field(description=CALL_STATUS_DESCRIPTION)
    ai_provider: str
    duration_seconds: int
    start_time: str
    answer_time: str | None = None
    end_time: str | None = None
    disconnect_reason: str | None = None
    error_message: str | None = None
    metrics: CallMetrics
    turns: list[CallTurn]
    sip_trace: str | None = None
    media: CallMedia | None = Field(
        None, description="Where the call's RTP went and came from, and one-way-audio warnings"
    )
    detail_purged_at: str | None = None


class CallList(BaseModel):
    """``GET /v1/calls`` response."""

    calls: list[CallSummary]
    pagination: Pagination


WebhookEvent = Literal[
    "call.started", "call.ended", "agent.connected", "agent.disconnected", "call.error", "*"
]


class WebhookCreate(BaseModel):
    """Body of ``POST /v1/webhooks``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, description="https:// URL that accepts POST")
    events: list[WebhookEvent] = Field(min_length=1, description="Event types, or '*' for all")


class Webhook(BaseModel):
    """A webhook endpoint; its signing secret is never shown again after creation."""

    id: str = Field(examples=["wh_01jdq3v7w5x8y9z0a1b2c3d4e5"])
    url: str
    events: list[str]
    active: bool
    created_at: str


class WebhookCreated(Webhook):
    """``POST /v1/webhooks`` response: the only time the signing secret is shown."""

    secret: str = Field(examples=["whsec_..."], description="HMAC-SHA256 signing secret")


class WebhookList(BaseModel):
    """``GET /v1/webhooks`` response."""

    webhooks: list[Webhook]
    pagination: Pagination
