"""The SDP data model (RFC 4566) and its serialization.

:class:`SessionDescription` holds one session and its :class:`MediaDescription` list, keeping
every line a peer sent (attributes in order, bandwidths, keys, extra time lines), so that
``parse(str(sd)) == sd``. ``str()`` emits CRLF-terminated lines in the order RFC 4566 §5
mandates. The helpers here only *read* attributes; they never raise on odd values, because
the parser has already validated the lines that matter (rtpmap, rtcp) and the others are
best-effort hints (ptime).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["sendrecv", "sendonly", "recvonly", "inactive"]

#: The RFC 4566 §6 / RFC 3264 §5.1 direction attributes.
DIRECTIONS: frozenset[str] = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})

#: RFC 3551 §6 Table 4: static audio payload types -> (encoding name, clock rate, channels).
STATIC_AUDIO_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    # RFC 3551 §4.5.2: G.722 samples at 16 kHz but its RTP clock rate is 8000 "for historical
    # reasons" -- the rtpmap says G722/8000.
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
}

Attribute = tuple[str, str | None]

# a=rtpmap:<payload type> <encoding name>/<clock rate>[/<encoding parameters>] (RFC 4566 §6)
_RTPMAP = re.compile(r"([0-9]{1,3})[ \t]+([^ \t/]+)/([0-9]{1,9})(?:/([0-9]{1,3}))?")
# a=rtcp:<port> [<nettype> <addrtype> <connection-address>] (RFC 3605 §2.1)
_RTCP = re.compile(r"([0-9]{1,5})(?:[ \t]+\S+[ \t]+\S+[ \t]+(\S+))?")
_FMTP = re.compile(r"([0-9]{1,3})(?:[ \t]+(.*))?")
_PTIME = re.compile(r"([0-9]{1,6})(?:\.[0-9]*)?")


def parse_rtpmap(value: str) -> tuple[int, str, int, int] | None:
    """Parse an ``a=rtpmap`` value into ``(pt, encoding, clock rate, channels)``, or None.

    Channels default to 1 for audio (RFC 4566 §6, "encoding parameters").
    """
    match = _RTPMAP.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    pt = int(match.group(1))
    if pt > 127:
        return None
    channels = int(match.group(4)) if match.group(4) else 1
    return pt, match.group(2), int(match.group(3)), channels


def parse_rtcp(value: str) -> int | None:
    """Parse an ``a=rtcp`` value (RFC 3605) into its port, or None if malformed."""
    parsed = parse_rtcp_address(value)
    return None if parsed is None else parsed[0]


def parse_rtcp_address(value: str) -> tuple[int, str | None] | None:
    """Parse an ``a=rtcp`` value (RFC 3605 §2.1) into its port and connection address (None
    when it gives only the port), or None if malformed."""
    match = _RTCP.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    port = int(match.group(1))
    return (port, match.group(2)) if port <= 65535 else None


def address_type(address: str) -> str:
    """``IP6`` for an address containing a colon, else ``IP4`` (RFC 4566 §5.7 addrtype)."""
    return "IP6" if ":" in address else "IP4"


def is_hold_address(address: str | None) -> bool:
    """True for the RFC 2543-style hold address ``c=IN IP4 0.0.0.0`` (RFC 3264 §8.4).

    ``::`` is treated the same way: no IPv6 peer can be reached there either.
    """
    return address in ("0.0.0.0", "::")


def _explicit_direction(attributes: list[Attribute]) -> Direction | None:
    for name, value in attributes:
        if value is None and name in DIRECTIONS:
            return name  # type: ignore[return-value]  # checked against DIRECTIONS
    return None


def _attribute_lines(attributes: list[Attribute]) -> list[str]:
    return [f"a={name}" if value is None else f"a={name}:{value}" for name, value in attributes]


def _connection_line(nettype: str, addrtype: str | None, address: str, ttl: str | None) -> str:
    suffix = f"/{ttl}" if ttl is not None else ""
    return f"c={nettype} {addrtype or address_type(address)} {address}{suffix}"


@dataclass
class Origin:
    """The ``o=`` line (RFC 4566 §5.2).

    Attributes:
        username: the originator's login, ``-`` when there is none.
        session_id: numeric session id, unique per originator.
        session_version: bumped each time the description changes (RFC 3264 §8).
        nettype: ``IN``.
        addrtype: ``IP4`` or ``IP6``.
        address: the originating host's address.
    """

    username: str
    session_id: int
    session_version: int
    nettype: str
    addrtype: str
    address: str

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass
class MediaDescription:
    """One ``m=`` section and the lines that follow it (RFC 4566 §5.14).

    Attributes:
        media: ``audio``, ``video``, ...
        port: transport port; 0 means the stream is disabled/rejected (RFC 3264 §5.1, §6).
        proto: ``RTP/AVP``, ``RTP/SAVP``, ...
        formats: the payload types (as strings, in the peer's preference order).
        connection_address: the media-level ``c=`` address, if any (without any ``/ttl``).
        attributes: ``a=`` lines in order, ``(name, value)``; value None for flags.
        number_of_ports: the ``/<n>`` of ``m=<media> <port>/<n>``, if given.
        information: the ``i=`` line.
        bandwidths: ``b=`` values, e.g. ``AS:64``.
        encryption_key: the ``k=`` line (obsolete, kept for round-trip only).
        connection_nettype: the ``c=`` nettype (``IN``).
        connection_addrtype: the ``c=`` addrtype; None infers it from the address form.
        connection_ttl: the multicast ``/ttl[/n]`` suffix of the ``c=`` address, if any.
    """

    media: str
    port: int
    proto: str
    formats: list[str]
    connection_address: str | None = None
    attributes: list[Attribute] = field(default_factory=list)
    number_of_ports: int | None = None
    information: str | None = None
    bandwidths: list[str] = field(default_factory=list)
    encryption_key: str | None = None
    connection_nettype: str = "IN"
    connection_addrtype: str | None = None
    connection_ttl: str | None = None

    @property
    def explicit_direction(self) -> Direction | None:
        """The media-level direction attribute, or None if the section has none."""
        return _explicit_direction(self.attributes)

    @property
    def direction(self) -> Direction:
        """The media-level direction, ``sendrecv`` by default (RFC 4566 §6).

        Ignores a session-level attribute; use :meth:`SessionDescription.media_direction`.
        """
        return self.explicit_direction or "sendrecv"

    def attribute_values(self, name: str) -> list[str]:
        """Values of every ``a=<name>:<value>`` line, in order."""
        return [v for n, v in self.attributes if n == name and v is not None]

    def has_attribute(self, name: str) -> bool:
        """True if any ``a=<name>`` line (flag or valued) is present."""
        return any(n == name for n, _ in self.attributes)

    def payload_types(self) -> list[int]:
        """The formats that are RTP payload types (0-127), in offer order."""
        pts: list[int] = []
        for fmt in self.formats:
            if fmt.isascii() and fmt.isdigit() and len(fmt) <= 3 and int(fmt) <= 127:
                pts.append(int(fmt))
        return pts

    def rtpmap(self) -> dict[int, tuple[str, int, int]]:
        """Map each payload type in ``formats`` to ``(encoding name, clock rate, channels)``.

        ``a=rtpmap`` lines win; static payload types without one are filled from RFC 3551 §6.
        Dynamic payload types without an rtpmap (an RFC 4566 §6 violation) are left out.
        """
        mapped: dict[int, tuple[str, int, int]] = {}
        for value in self.attribute_values("rtpmap"):
            parsed = parse_rtpmap(value)
            if parsed is not None and parsed[0] not in mapped:
                mapped[parsed[0]] = parsed[1:]
        result: dict[int, tuple[str, int, int]] = {}
        for pt in self.payload_types():
            if pt in mapped:
                result[pt] = mapped[pt]
            elif pt in STATIC_AUDIO_PAYLOAD_TYPES:
                result[pt] = STATIC_AUDIO_PAYLOAD_TYPES[pt]
        return result

    def fmtp(self) -> dict[int, str]:
        """Map payload type to its ``a=fmtp`` parameter string (first line per PT wins)."""
        result: dict[int, str] = {}
        for value in self.attribute_values("fmtp"):
            match = _FMTP.fullmatch(value.strip(" \t"))
            if match is not None:
                result.setdefault(int(match.group(1)), (match.group(2) or "").strip(" \t"))
        return result

    @property
    def ptime(self) -> int | None:
        """``a=ptime`` in milliseconds (RFC 4566 §6), None if absent or unparsable.

        Some peers send a decimal (``20.0``); the fraction is dropped.
        """
        for value in self.attribute_values("ptime"):
            match = _PTIME.fullmatch(value.strip(" \t"))
            if match is not None and int(match.group(1)) > 0:
                return int(match.group(1))
        return None

    @property
    def rtcp_port(self) -> int | None:
        """The ``a=rtcp`` port (RFC 3605), None if absent."""
        for value in self.attribute_values("rtcp"):
            port = parse_rtcp(value)
            if port is not None:
                return port
        return None

    @property
    def rtcp_address(self) -> str | None:
        """The connection address of that ``a=rtcp`` line (RFC 3605 §2.1), None if it gives
        only a port (the RTCP address is then the RTP one) or is absent."""
        for value in self.attribute_values("rtcp"):
            parsed = parse_rtcp_address(value)
            if parsed is not None:
                return parsed[1]
        return None

    @property
    def rtcp_mux(self) -> bool:
        """True if the section carries ``a=rtcp-mux`` (RFC 5761 §5.1.1)."""
        return self.has_attribute("rtcp-mux")

    def lines(self) -> list[str]:
        """This section's lines in RFC 4566 §5 order (m, i, c, b, k, a), without line ends."""
        port = str(self.port)
        if self.number_of_ports is not None:
            port += f"/{self.number_of_ports}"
        out = [f"m={' '.join([self.media, port, self.proto, *self.formats])}"]
        if self.information is not None:
            out.append(f"i={self.information}")
        if self.connection_address is not None:
            out.append(
                _connection_line(
                    self.connection_nettype,
                    self.connection_addrtype,
                    self.connection_address,
                    self.connection_ttl,
                )
            )
        out.extend(f"b={b}" for b in self.bandwidths)
        if self.encryption_key is not None:
            out.append(f"k={self.encryption_key}")
        out.extend(_attribute_lines(self.attributes))
        return out


@dataclass
class SessionDescription:
    """A whole session description (RFC 4566 §5).

    Attributes:
        version: the ``v=`` value, always 0.
        origin: the ``o=`` line.
        session_name: the ``s=`` text (``""`` is written as ``s= `` per §5.3).
        connection_address: the session-level ``c=`` address, if any.
        timing: the first ``t=`` value, ``"0 0"`` for an unbounded session.
        attributes: session-level ``a=`` lines in order.
        media: the ``m=`` sections in order (their order is significant, RFC 3264 §6).
        information, uri, emails, phones: the ``i=``, ``u=``, ``e=`` and ``p=`` lines.
        bandwidths: session-level ``b=`` values.
        extra_time_lines: ``("r", ...)`` and further ``("t", ...)`` lines after the first t=.
        timezones: the ``z=`` line; encryption_key: the ``k=`` line.
        connection_nettype, connection_addrtype, connection_ttl: the rest of the ``c=`` line.
    """

    version: int
    origin: Origin
    session_name: str
    connection_address: str | None = None
    timing: str = "0 0"
    attributes: list[Attribute] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    information: str | None = None
    uri: str | None = None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    bandwidths: list[str] = field(default_factory=list)
    extra_time_lines: list[tuple[str, str]] = field(default_factory=list)
    timezones: str | None = None
    encryption_key: str | None = None
    connection_nettype: str = "IN"
    connection_addrtype: str | None = None
    connection_ttl: str | None = None

    def __str__(self) -> str:
        # RFC 4566 §5: v o s i u e p c b (t r*)+ z k a, then each media section.
        lines = [
            f"v={self.version}",
            f"o={self.origin}",
            f"s={self.session_name or ' '}",
        ]
        if self.information is not None:
            lines.append(f"i={self.information}")
        if self.uri is not None:
            lines.append(f"u={self.uri}")
        lines.extend(f"e={e}" for e in self.emails)
        lines.extend(f"p={p}" for p in self.phones)
        if self.connection_address is not None:
            lines.append(
                _connection_line(
                    self.connection_nettype,
                    self.connection_addrtype,
                    self.connection_address,
                    self.connection_ttl,
                )
            )
        lines.extend(f"b={b}" for b in self.bandwidths)
        lines.append(f"t={self.timing}")
        lines.extend(f"{kind}={value}" for kind, value in self.extra_time_lines)
        if self.timezones is not None:
            lines.append(f"z={self.timezones}")
        if self.encryption_key is not None:
            lines.append(f"k={self.encryption_key}")
        lines.extend(_attribute_lines(self.attributes))
        for m in self.media:
            lines.extend(m.lines())
        # RFC 4566 §5: every line, including the last, ends in CRLF.
        return "\r\n".join(lines) + "\r\n"

    def to_bytes(self) -> bytes:
        """The description as a UTF-8 SIP message body (RFC 4566 §5: ISO 10646/UTF-8)."""
        return str(self).encode("utf-8")

    @property
    def explicit_direction(self) -> Direction | None:
        """The session-level direction attribute, or None if there is none."""
        return _explicit_direction(self.attributes)

    def media_connection_address(self, m: MediaDescription) -> str | None:
        """The address media for ``m`` goes to: its own ``c=`` or the session's (§5.7)."""
        if m.connection_address is not None:
            return m.connection_address
        return self.connection_address

    def media_direction(self, m: MediaDescription) -> Direction:
        """The direction of ``m``: media-level attribute, else session-level, else sendrecv.

        RFC 4566 §6 / RFC 3264 §5.1: a session-level direction attribute applies to every
        media section that does not carry its own.
        """
        return m.explicit_direction or self.explicit_direction or "sendrecv"
