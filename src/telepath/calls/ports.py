"""The interfaces call control needs from the outer ring, implemented by ``db`` and ``webhooks``.

Call control never imports the database, the API or the webhook sender: ``telepath serve`` wires
these implementations in. Dependencies only point inward.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, Protocol

from telepath.calls.model import CallRecord


class CallRecorder(Protocol):
    """Persists call records."""

    async def call_started(self, record: CallRecord) -> None:
        """Store a new record (status ``connected``)."""
        ...

    @property
    def queues_events(self) -> bool:
        """Whether ``call_ended`` also writes the end's events, in the record's transaction."""
        ...

    async def call_ended(self, record: CallRecord, events: Sequence[dict[str, Any]] = ()) -> None:
        """Store the final state of a record (end time, reason, metrics, turns, trace) and,
        when ``queues_events``, the events ``EventSink.prepare`` made, in one transaction."""
        ...


class EventSink(Protocol):
    """Receives account-level events (``call.started``, ``call.ended``, ``agent.connected``,
    ``agent.disconnected``, ``call.error``) for durable webhook delivery."""

    def wants(self, account_id: str, event: str) -> bool:
        """False when it is known that no endpoint of the account subscribes to ``event`` (the
        payload need not be built); True otherwise, or when it is not known yet."""
        ...

    async def emit(self, account_id: str, event: str, payload: dict[str, Any]) -> None:
        """Queue ``event`` for the account's subscribed endpoints; must not block on delivery."""
        ...

    def prepare(self, account_id: str, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        """``event`` made for ``CallRecorder.call_ended`` to write with the record."""
        ...


@dataclass(frozen=True, slots=True)
class TrunkConfig:
    """Everything call control needs about one trunk, secrets decrypted, held only in memory."""

    trunk_id: str
    account_id: str
    sip_username: str
    active: bool
    realm: str
    ha1_md5: str
    ha1_sha256: str
    ai_provider: str  # "openai" | "elevenlabs" | "custom"
    system_prompt: str | None = None
    openai_api_key: str | None = None
    openai_model: str | None = None
    openai_voice: str | None = None
    elevenlabs_api_key: str | None = None
    elevenlabs_agent_id: str | None = None
    custom_endpoint: str | None = None
    custom_protocol: str | None = None
    custom_reconnect: bool = False  # a dropped connection is dialled again (telepath protocol)
    custom_headers: dict[str, str] = field(default_factory=dict)
    digest_algorithms: tuple[str, ...] | None = None  # None: the installation default
    # The sources its calls and registrations may come from; empty: any source.
    allowed_networks: tuple[IPv4Network | IPv6Network, ...] = ()
    # The called numbers it serves (canonical E.164); empty: any.
    inbound_numbers: frozenset[str] = frozenset()
    # The caller numbers that may call it (canonical E.164); empty: any.
    allowed_callers: frozenset[str] = frozenset()
    # "digest" (challenge) or "address": its numbers' INVITEs from allowed_networks are taken
    # without a challenge (carriers that answer none).
    sip_auth: str = "digest"
    # SRTP for its calls: "allowed" | "required" | "disabled"; None: the installation's.
    media_encryption: str | None = None
    # Codecs for its calls, preferred first; None: the installation's.
    codecs: tuple[str, ...] | None = None
    # Names of INVITE headers passed on to its agent.
    forward_sip_headers: tuple[str, ...] = ()
    # Its outbound registration (``registration``), if it has one: the host of the registrar
    # (an INVITE to the registered contact is taken from there without a challenge) and the
    # contact's user part (``RegistrationConfig.contact_user``).
    registrar_host: str | None = None
    registration_proxy_host: str | None = None  # its outbound proxy's, which may send them too
    # Its registration's first hop is TCP or TLS (sips:, transport=tcp|tls): the registrar's
    # calls come over that connection, and its numbers are not taken unchallenged over UDP,
    # where a source address can be forged.
    registration_streamed: bool = False
    registration_contact: str | None = None
    # Its registration's digest username and password (decrypted): what we answer a
    # challenge of the registrar's to our own in-dialog requests with (BYE, REFER, refresh).
    registration_credentials: tuple[str, str] | None = field(default=None, repr=False)

    @property
    def address_auth(self) -> bool:
        """True if its calls are authenticated by source address and called number."""
        return self.sip_auth == "address" and bool(self.allowed_networks and self.inbound_numbers)

    def serves(self, number: str | None) -> bool:
        """True if a call to ``number`` (canonical E.164, or None when the INVITE names none)
        may use this trunk: any number when it lists none."""
        return not self.inbound_numbers or number in self.inbound_numbers

    def allows_caller(self, number: str | None) -> bool:
        """True if a call from ``number`` (canonical E.164, or None for an anonymous or
        non-E.164 caller) may use this trunk: any caller when it lists none."""
        return not self.allowed_callers or number in self.allowed_callers

    def allows_source(self, ip: str) -> bool:
        """True if a request from ``ip`` may use this trunk (an IPv4-mapped IPv6 address
        counts as its IPv4 address; an unparseable one is never allowed by a list)."""
        if not self.allowed_networks:
            return True
        try:
            address = ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.allowed_networks)

    def __repr__(self) -> str:  # never print secrets by accident
        return f"TrunkConfig(trunk_id={self.trunk_id!r}, ai_provider={self.ai_provider!r})"


#: How the contact users of registrations begin (``RegistrationConfig.contact_user``): only
#: an INVITE whose Request-URI user begins so is looked up as one (one that is not falls
#: through to the usual digest path, so a trunk username may begin so too).
CONTACT_USER_PREFIX = "tpr-"


@dataclass(frozen=True, slots=True)
class RegistrationConfig:
    """A trunk's outbound registration: Telepath registers with the carrier as a SIP client
    (RFC 3261 §10.2), so calls reach it at a contact the carrier learns, NAT or not.

    Attributes:
        trunk_id: the trunk.
        registrar: the registrar's URI, ``sip:host[:port]`` (no user part, §10.2).
        username: the user of the address-of-record (``sip:username@domain``) and, unless
            ``auth_username`` is set, of the digest.
        password: the digest password, decrypted (held only in memory).
        auth_username: the digest username when the carrier's differs from ``username``.
        domain: the address-of-record's domain when it is not the registrar's host.
        outbound_proxy: where every REGISTER goes (with a Route header naming it), when not
            to the registrar itself: ``sip:host[:port][;transport=…]``.
        expires: the registration interval asked for, in seconds.
        contact_user: the user part of the contact registered (``sip:<contact_user>@...``),
            random and unique per trunk: an INVITE to it is this trunk's.
    """

    trunk_id: str
    registrar: str
    username: str
    password: str = field(repr=False)
    auth_username: str | None = None
    domain: str | None = None
    expires: int = 300
    contact_user: str = ""
    outbound_proxy: str | None = None


class RegistrationStore(Protocol):
    """The registrations to keep up, and where their state is reported (``GET /v1/trunks``)."""

    async def registrations(self) -> list[RegistrationConfig]:
        """Every registration of an active trunk, passwords decrypted.

        Raises:
            DirectoryUnavailable: the trunks cannot be read now.
        """
        ...

    async def set_registration_status(
        self,
        trunk_id: str,
        status: str,
        detail: str | None,
        registered_until: datetime | None,
        contact_address: str | None = None,
    ) -> None:
        """Record a registration's state: ``registered`` (until ``registered_until``, with
        ``contact_address``, the ``host:port`` registered), ``failed`` (``detail`` says why,
        e.g. ``403 Forbidden`` or ``no response``) or ``unregistered`` (``contact_address``:
        the binding refused or removed; neither is stored while another instance's unexpired
        binding is shown). A trunk or registration deleted meanwhile is ignored."""
        ...


#: What a trunk's ``sip_username`` may be (the API refuses anything else with these,
#: ``api/trunk_input.py``): call control need not look up a Request-URI user that cannot be
#: one (``+14155550100``) to know that it names no trunk.
SIP_USERNAME_CHARS = re.compile(r"[A-Za-z0-9-]+")
SIP_USERNAME_MIN, SIP_USERNAME_MAX = 3, 30


def may_be_sip_username(text: str) -> bool:
    """Whether ``text`` has the form of a trunk's ``sip_username`` (any case)."""
    return (
        SIP_USERNAME_MIN <= len(text) <= SIP_USERNAME_MAX
        and SIP_USERNAME_CHARS.fullmatch(text) is not None
    )


class DirectoryUnavailable(Exception):
    """The trunks cannot be read now (the database is unreachable); a later attempt may work."""


class TrunkDirectory(Protocol):
    """Finds the trunk that owns a SIP username (digest) or serves a called number."""

    async def find_by_sip_username(self, sip_username: str) -> TrunkConfig | None:
        """The trunk, or None when no trunk has this username.

        Raises:
            DirectoryUnavailable: the trunks cannot be read now (and none was known).
        """
        ...

    async def find_by_number(self, number: str) -> TrunkConfig | None:
        """The trunk serving a called number (canonical E.164), or None.

        Raises:
            DirectoryUnavailable: the trunks cannot be read now (and none was known).
        """
        ...

    async def find_by_contact(self, contact_user: str) -> TrunkConfig | None:
        """The trunk whose registration's contact user is ``contact_user``, or None.

        Raises:
            DirectoryUnavailable: the trunks cannot be read now (and none was known).
        """
        ...

    async def inactive_among(self, trunk_ids: Collection[str]) -> set[str]:
        """Those of ``trunk_ids`` that no longer exist or are no longer active."""
        ...
