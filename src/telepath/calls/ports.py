"""The interfaces call control needs from the outer ring, implemented by ``db`` and ``webhooks``.

Call control never imports the database, the API or the webhook sender: ``telepath serve`` wires
these implementations in. Dependencies only point inward.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, Protocol

from telepath.calls.model import CallRecord


class CallRecorder(Protocol):
    """Persists call records."""

    async def call_started(self, record: CallRecord) -> None:
        """Store a new record (status ``connected``)."""
        ...

    async def call_ended(self, record: CallRecord) -> None:
        """Store the final state of a record (end time, reason, metrics, turns, trace)."""
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
    custom_headers: dict[str, str] = field(default_factory=dict)
    digest_algorithms: tuple[str, ...] | None = None  # None: the installation default
    # The sources its calls and registrations may come from; empty: any source.
    allowed_networks: tuple[IPv4Network | IPv6Network, ...] = ()
    # The called numbers it serves (canonical E.164); empty: any.
    inbound_numbers: frozenset[str] = frozenset()
    # "digest" (challenge) or "address": its numbers' INVITEs from allowed_networks are taken
    # without a challenge (carriers that answer none).
    sip_auth: str = "digest"
    # SRTP for its calls: "allowed" | "required" | "disabled"; None: the installation's.
    media_encryption: str | None = None
    # Codecs for its calls, preferred first; None: the installation's.
    codecs: tuple[str, ...] | None = None
    # Names of INVITE headers passed on to its agent.
    forward_sip_headers: tuple[str, ...] = ()

    @property
    def address_auth(self) -> bool:
        """True if its calls are authenticated by source address and called number."""
        return self.sip_auth == "address" and bool(self.allowed_networks and self.inbound_numbers)

    def serves(self, number: str | None) -> bool:
        """True if a call to ``number`` (canonical E.164, or None when the INVITE names none)
        may use this trunk: any number when it lists none."""
        return not self.inbound_numbers or number in self.inbound_numbers

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

    async def inactive_among(self, trunk_ids: Collection[str]) -> set[str]:
        """Those of ``trunk_ids`` that no longer exist or are no longer active."""
        ...
