"""Parse an SDP body (RFC 4566) into a :class:`SessionDescription`.

The parser is strict about structure and lenient about whitespace:

- accepted: CRLF or bare LF line ends (RFC 4566 §5 asks parsers to accept LF), trailing spaces
  and tabs, blank lines, several spaces between fields, session-level lines in any order after
  ``v=``/``o=``, a missing ``t=`` (some SIP devices omit it; ``"0 0"`` is assumed), an empty
  ``s=``, zero ``m=`` sections (RFC 3264 §5 allows it; negotiation then rejects the offer);
- rejected with :class:`SdpError` (400): input over :data:`MAX_SDP_SIZE`, NUL bytes, a stray
  CR inside a line, a first line that is not ``v=0``, a second that is not ``o=``, unknown
  type letters (§5: a parser "MUST completely ignore any session description that contains a
  type letter that it does not understand"), session-level lines after the first ``m=``,
  duplicate single-valued lines, malformed ``o=``/``c=``/``t=``/``m=`` lines, non-numeric RTP
  payload types and malformed ``a=rtpmap``/``a=rtcp`` values.

Every failure is an :class:`SdpError`; nothing else escapes :func:`parse`.
"""

from __future__ import annotations

import re

from telepath.sdp.errors import SdpError
from telepath.sdp.model import (
    Attribute,
    MediaDescription,
    Origin,
    SessionDescription,
    parse_rtcp,
    parse_rtpmap,
)

#: Largest body we parse. A real audio offer is well under 2 KiB; this bounds hostile input.
MAX_SDP_SIZE = 64 * 1024

# RFC 4566 §5: the type letters we understand, session level and media level.
_SESSION_TYPES = frozenset("vosiuepcbtrzka")
_MEDIA_TYPES = frozenset("icbka")
_SINGLE_SESSION_TYPES = frozenset("vosiuczk")
_SINGLE_MEDIA_TYPES = frozenset("ick")

_FIELDS = re.compile(r"[ \t]+")
_DIGITS = re.compile(r"[0-9]+")
# RFC 4566 §9: att-field = token (RFC 3261 token characters).
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Za-z^_`{|}~]+")
_PORT = re.compile(r"([0-9]{1,5})(?:/([0-9]{1,5}))?")


def _split(value: str) -> list[str]:
    """Split on runs of spaces/tabs (only: ``str.split()`` also splits on Unicode spaces)."""
    stripped = value.strip(" \t")
    return _FIELDS.split(stripped) if stripped else []


def _number(text: str, what: str, *, max_digits: int = 20) -> int:
    if len(text) > max_digits or not _DIGITS.fullmatch(text):
        raise SdpError(f"SDP {what} is not a number: {text[:40]!r}")
    return int(text)


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        if len(data) > MAX_SDP_SIZE:
            raise SdpError(f"SDP body exceeds {MAX_SDP_SIZE} bytes")
        return data
    if len(data) > MAX_SDP_SIZE:
        raise SdpError(f"SDP body exceeds {MAX_SDP_SIZE} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # RFC 4566 §5 text is UTF-8 unless a=charset says otherwise; some devices send
        # Latin-1 session names. Latin-1 decodes any byte string.
        return data.decode("latin-1")


def _lines(text: str) -> list[tuple[int, str, str]]:
    if "\x00" in text:
        raise SdpError("SDP contains a NUL character")
    out: list[tuple[int, str, str]] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip(" \t\r")
        if not line:
            continue
        if "\r" in line:
            raise SdpError(f"SDP line {number} contains a bare CR")
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"SDP line {number} is not <type>=<value>: {line[:40]!r}")
        kind = line[0]
        if kind not in _SESSION_TYPES and kind != "m":
            raise SdpError(f"SDP line {number} has unknown type {kind!r} (RFC 4566 §5)")
        out.append((number, kind, line[2:]))
    return out


def _parse_origin(value: str) -> Origin:
    # o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address> (§5.2)
    parts = _split(value)
    if len(parts) != 6:
        raise SdpError(f"SDP o= line needs 6 fields, got {len(parts)}")
    username, sess_id, sess_version, nettype, addrtype, address = parts
    return Origin(
        username=username,
        session_id=_number(sess_id, "o= session id", max_digits=40),
        session_version=_number(sess_version, "o= session version", max_digits=40),
        nettype=nettype,
        addrtype=addrtype,
        address=address,
    )


def _parse_connection(value: str) -> tuple[str, str, str, str | None]:
    # c=<nettype> <addrtype> <connection-address>[/<ttl>][/<number of addresses>] (§5.7)
    parts = _split(value)
    if len(parts) != 3:
        raise SdpError(f"SDP c= line needs 3 fields, got {len(parts)}")
    nettype, addrtype, address = parts
    host, sep, ttl = address.partition("/")
    if not host or (sep and not ttl):
        raise SdpError(f"SDP c= address is malformed: {address[:60]!r}")
    return nettype, addrtype, host, ttl if sep else None


def _parse_timing(value: str) -> str:
    # t=<start-time> <stop-time> (§5.9), NTP seconds or 0.
    parts = _split(value)
    if len(parts) != 2:
        raise SdpError(f"SDP t= line needs 2 fields, got {len(parts)}")
    for part in parts:
        _number(part, "t= time")
    return " ".join(parts)


def _parse_media(value: str) -> MediaDescription:
    # m=<media> <port>[/<number of ports>] <proto> <fmt> ... (§5.14)
    parts = _split(value)
    if len(parts) < 4:
        raise SdpError("SDP m= line needs <media> <port> <proto> and at least one format")
    media, port_text, proto, *formats = parts
    port_match = _PORT.fullmatch(port_text)
    if port_match is None:
        raise SdpError(f"SDP m= port is malformed: {port_text[:20]!r}")
    port = int(port_match.group(1))
    if port > 65535:
        raise SdpError(f"SDP m= port {port} is out of range")
    number_of_ports = int(port_match.group(2)) if port_match.group(2) else None
    if number_of_ports == 0:
        raise SdpError("SDP m= number of ports is 0")
    if "RTP/" in proto.upper():
        # For RTP profiles the formats are payload types, 0-127 (RFC 3550 §5.1, §5.14).
        for fmt in formats:
            if not (len(fmt) <= 3 and _DIGITS.fullmatch(fmt) and int(fmt) <= 127):
                raise SdpError(f"SDP m= payload type is not 0-127: {fmt[:20]!r}")
    return MediaDescription(
        media=media, port=port, proto=proto, formats=formats, number_of_ports=number_of_ports
    )


def _parse_attribute(value: str) -> Attribute:
    # a=<attribute> | a=<attribute>:<value> (§5.13)
    name, sep, rest = value.partition(":")
    if not _TOKEN.fullmatch(name):
        raise SdpError(f"SDP a= attribute name is not a token: {name[:40]!r}")
    if not sep:
        return name, None
    if name == "rtpmap" and parse_rtpmap(rest) is None:
        raise SdpError(f"SDP a=rtpmap is malformed: {rest[:60]!r}")
    if name == "rtcp" and parse_rtcp(rest) is None:
        raise SdpError(f"SDP a=rtcp is malformed: {rest[:60]!r}")
    return name, rest


def _apply_media_line(m: MediaDescription, kind: str, value: str) -> None:
    if kind == "a":
        m.attributes.append(_parse_attribute(value))
    elif kind == "c":
        m.connection_nettype, addrtype, m.connection_address, m.connection_ttl = _parse_connection(
            value
        )
        m.connection_addrtype = addrtype
    elif kind == "b":
        m.bandwidths.append(value)
    elif kind == "i":
        m.information = value
    else:  # "k"
        m.encryption_key = value


def parse(data: bytes | str) -> SessionDescription:
    """Parse an SDP body.

    Args:
        data: the SIP message body, as bytes (UTF-8, Latin-1 tolerated) or text.

    Returns:
        The session description, with every line preserved.

    Raises:
        SdpError: the body is malformed (``status_hint`` 400). Nothing else is raised.
    """
    lines = _lines(_decode(data))
    if not lines:
        raise SdpError("SDP body is empty")
    _, kind, value = lines[0]
    if kind != "v":
        raise SdpError("SDP must start with v= (RFC 4566 §5)")
    if value.strip(" \t") != "0":
        raise SdpError(f"SDP version must be 0, got {value[:20]!r} (RFC 4566 §5.1)")
    if len(lines) < 2 or lines[1][1] != "o":
        raise SdpError("SDP o= must follow v= (RFC 4566 §5)")
    origin = _parse_origin(lines[1][2])

    sd = SessionDescription(version=0, origin=origin, session_name="", timing="")
    seen: set[str] = {"v", "o"}
    media: MediaDescription | None = None
    media_seen: set[str] = set()
    for number, kind, value in lines[2:]:
        if kind == "m":
            media = _parse_media(value)
            media_seen = set()
            sd.media.append(media)
            continue
        if media is not None:
            if kind not in _MEDIA_TYPES:
                raise SdpError(f"SDP line {number}: {kind}= is not allowed after m= (§5)")
            if kind in _SINGLE_MEDIA_TYPES and kind in media_seen:
                raise SdpError(f"SDP line {number}: duplicate media-level {kind}= line")
            media_seen.add(kind)
            _apply_media_line(media, kind, value)
            continue
        if kind in _SINGLE_SESSION_TYPES and kind in seen:
            raise SdpError(f"SDP line {number}: duplicate {kind}= line")
        if kind == "t" and "t" not in seen:
            sd.timing = _parse_timing(value)
        elif kind in ("t", "r"):
            if "t" not in seen:
                raise SdpError(f"SDP line {number}: r= before t= (RFC 4566 §5.10)")
            sd.extra_time_lines.append((kind, _parse_timing(value) if kind == "t" else value))
        elif kind == "s":
            sd.session_name = value
        elif kind == "i":
            sd.information = value
        elif kind == "u":
            sd.uri = value
        elif kind == "e":
            sd.emails.append(value)
        elif kind == "p":
            sd.phones.append(value)
        elif kind == "c":
            sd.connection_nettype, addrtype, sd.connection_address, sd.connection_ttl = (
                _parse_connection(value)
            )
            sd.connection_addrtype = addrtype
        elif kind == "b":
            sd.bandwidths.append(value)
        elif kind == "z":
            sd.timezones = value
        elif kind == "k":
            sd.encryption_key = value
        elif kind == "a":
            sd.attributes.append(_parse_attribute(value))
        else:  # a second v= or o=
            raise SdpError(f"SDP line {number}: duplicate {kind}= line")
        seen.add(kind)
    if "s" not in seen:
        raise SdpError("SDP has no s= line (RFC 4566 §5.3)")
    if not sd.timing:
        sd.timing = "0 0"  # leniency: t= missing entirely
    return sd
