"""Validation of trunk request bodies, field by field, with the seed's error codes and messages.

Bodies are parsed here rather than by a pydantic model in the route signature because the
contract fixes the *first* error's code and wording (``missing_required_field`` with
``"<field> is required"``, ``invalid_sip_username`` with the seed's sentence, ...), in a
deterministic order, including requirements that depend on ``ai_provider``. The pydantic models in
``schemas.py`` document the same rules in the OpenAPI spec.

Order of checks: body is a JSON object -> no unknown fields -> types -> required fields ->
``ai_provider`` -> ``sip_username`` -> ``sip_password`` -> provider-conditional fields -> values.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from dataclasses import dataclass, field
from ipaddress import ip_network
from typing import Any, Final
from urllib.parse import urlsplit

from fastapi import Request

from telepath.api.errors import ApiError
from telepath.api.registration_input import parse_registration
from telepath.api.url_hosts import connectable_host
from telepath.calls.ports import SIP_USERNAME_CHARS, SIP_USERNAME_MAX, SIP_USERNAME_MIN
from telepath.sdp.negotiate import SUPPORTED_CODECS
from telepath.sip.numbers import canonical_number

PROVIDERS: Final = ("openai", "elevenlabs", "custom")
CUSTOM_PROTOCOLS: Final = ("telepath", "twilio")
SETTABLE_STATUSES: Final = ("active", "inactive")

SIP_PASSWORD_MIN, SIP_PASSWORD_MAX = 8, 128
NAME_MAX = 200
# The widths of their columns (VARCHAR(100) and VARCHAR(50)): PostgreSQL refuses longer values.
OPENAI_MODEL_MAX, OPENAI_VOICE_MAX = 100, 50
SYSTEM_PROMPT_MAX = 32_000
API_KEY_MAX = 512
URL_MAX = 2048
MAX_CUSTOM_HEADERS = 20
HEADER_VALUE_MAX = 4096
MAX_BODY_BYTES = 256 * 1024  # a 32,000-character prompt, \uXXXX-escaped, still fits
#: Seconds to receive a whole request body (``ApiState.body_timeout_s``): 256 KiB at a slow
#: 10 KB/s takes 26 s, while a client stalling on purpose is cut off.
BODY_TIMEOUT_S: Final = 30.0

IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
HEADER_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2 token
# Headers the WebSocket client itself must control (RFC 6455 §4.1).
RESERVED_HEADERS = frozenset(
    {"host", "connection", "upgrade", "content-length", "transfer-encoding"}
)

# Which optional field belongs to which provider; a field for another provider is an error.
PROVIDER_FIELDS: Final[dict[str, str]] = {
    "openai_api_key": "openai",
    "openai_model": "openai",
    "openai_voice": "openai",
    "elevenlabs_api_key": "elevenlabs",
    "elevenlabs_agent_id": "elevenlabs",
    "custom_endpoint": "custom",
    "custom_protocol": "custom",
    "custom_headers": "custom",
    "custom_reconnect": "custom",
}
REQUIRED_BY_PROVIDER: Final[dict[str, tuple[str, ...]]] = {
    "openai": ("openai_api_key",),
    "elevenlabs": ("elevenlabs_api_key", "elevenlabs_agent_id"),
    "custom": ("custom_endpoint",),
}
# Provider settings (owner in PROVIDER_FIELDS) and the prompt, shared by create and update.
PROVIDER_OPTIONS: Final = (
    "openai_api_key",
    "openai_model",
    "openai_voice",
    "elevenlabs_api_key",
    "elevenlabs_agent_id",
    "custom_endpoint",
    "custom_protocol",
    "custom_headers",
    "custom_reconnect",
    "system_prompt",
)
# Optional SIP and media settings beyond the seed, shared by create and update; all clearable.
TRUNK_SETTINGS: Final = (
    "sip_digest_algorithms",
    "allowed_addresses",
    "sip_auth",
    "inbound_numbers",
    "allowed_caller_numbers",
    "media_encryption",
    "codecs",
    "forward_sip_headers",
    "registration",
)
CREATE_FIELDS: Final = (
    "name",
    "ai_provider",
    "sip_username",
    "sip_password",
    *PROVIDER_OPTIONS,
    *TRUNK_SETTINGS,
)
UPDATE_FIELDS: Final = ("name", "status", *PROVIDER_OPTIONS, *TRUNK_SETTINGS)
IMMUTABLE_FIELDS: Final = {
    "ai_provider": "ai_provider cannot be changed; create a new trunk instead",
    "sip_username": "sip_username cannot be changed; create a new trunk instead",
    "sip_password": "sip_password cannot be set here; use POST /v1/trunks/{id}/rotate-password",
}
# Optional fields that PATCH may clear with null.
CLEARABLE: Final = frozenset(
    {
        "openai_model",
        "openai_voice",
        "custom_headers",
        "custom_reconnect",
        "system_prompt",
        *TRUNK_SETTINGS,
    }
)
#: At most this many entries in ``allowed_addresses`` (a carrier publishes a handful of ranges).
MAX_ALLOWED_ADDRESSES: Final = 32
#: At most this many ``inbound_numbers`` (or ``allowed_caller_numbers``) on one trunk.
MAX_INBOUND_NUMBERS: Final = 100
DIGEST_ALGORITHMS: Final = ("SHA-256", "MD5")
#: How a trunk's INVITEs authenticate: a digest challenge, or the source address (with
#: ``allowed_addresses`` and ``inbound_numbers`` both set: ``TrunkService`` checks).
SIP_AUTH_MODES: Final = ("digest", "address")
#: SRTP for one trunk's calls (``TELEPATH_SIP_SRTP``'s allow / require / off, in the words
#: peers' trunk APIs use).
MEDIA_ENCRYPTION: Final = ("allowed", "required", "disabled")
#: Fields whose value is an array of strings.
_STRING_ARRAYS: Final = (
    "allowed_addresses",
    "inbound_numbers",
    "allowed_caller_numbers",
    "codecs",
    "forward_sip_headers",
)
#: At most this many ``forward_sip_headers``.
MAX_FORWARDED_HEADERS: Final = 20
#: Headers never passed to an agent: credentials, and what only routes the request.
UNFORWARDABLE_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "via", "route", "record-route", "max-forwards"}
)
#: The codecs a trunk may list: the SDP code's, as ``TELEPATH_SIP_CODECS`` may.
CODECS: Final = SUPPORTED_CODECS


def _bad(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def _too_large() -> ApiError:
    return ApiError(413, "payload_too_large", f"Request body exceeds {MAX_BODY_BYTES} bytes")


async def read_body(request: Request, *, timeout_s: float) -> bytes:
    """The request body, at most ``MAX_BODY_BYTES`` of it: a larger declared Content-Length is
    refused before reading, and a streamed (chunked) body no further than past the limit
    (413 ``payload_too_large`` either way; found by review: bodies were read whole first).

    All of it within ``timeout_s`` (408 ``request_timeout``, and the connection closed): the
    server sets no limit of its own, so a client sending a byte a second kept its request,
    and whatever it held, for as long as it liked (found by review). Callers read the body
    holding no database connection."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise _too_large()
                chunks.append(chunk)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise ApiError(
            408,
            "request_timeout",
            f"The request body was not received within {timeout_s:g} s",
            {"Connection": "close"},
        ) from None
    return b"".join(chunks)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be one JSON object."""
    if len(raw) > MAX_BODY_BYTES:
        raise _too_large()
    try:
        body = json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError):
        raise _bad("invalid_json", "Request body must be valid JSON") from None
    except RecursionError:  # arrays or objects nested past the interpreter's recursion limit
        raise _bad("invalid_json", "Request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise _bad("invalid_json", "Request body must be a JSON object")
    _check_storable(body)
    return body


def unstorable(text: str) -> bool:
    """Whether ``text`` has a NUL (PostgreSQL refuses it in text) or an unpaired surrogate
    (JSON's ``"\\ud800"``: no UTF-8 encoding, for the database, the keyring or the answer)."""
    if "\x00" in text:
        return True
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_storable(body: dict[str, Any]) -> None:
    """Every string of the body, field names included, at any depth, can be stored: checked
    once here rather than by each field's rules (400 ``invalid_field``, naming the field)."""
    pending: deque[tuple[str, Any]] = deque([("", body)])
    while pending:  # no recursion: the body may be nested as deep as json.loads allowed
        where, value = pending.popleft()
        if isinstance(value, str):
            if unstorable(value):
                raise _bad(
                    "invalid_field",
                    f"{where[:64]} must not contain NUL characters or unpaired surrogates",
                )
        elif isinstance(value, dict):
            for key, item in value.items():
                if unstorable(key):
                    raise _bad(
                        "invalid_field",
                        "Field names must not contain NUL characters or unpaired surrogates",
                    )
                pending.append((f"{where}.{key}" if where else key, item))
        elif isinstance(value, list):
            pending.extend((where, item) for item in value)


def _check_types(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in body:
        if key not in allowed:
            if key in IMMUTABLE_FIELDS:
                raise _bad("immutable_field", IMMUTABLE_FIELDS[key])
            raise _bad("unknown_field", f"Unknown field: {key[:64]}")
    for key, value in body.items():
        if value is None:
            continue
        if key == "custom_headers":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise _bad("invalid_field_type", "custom_headers must be an object of strings")
        elif key == "registration":
            if not isinstance(value, dict):
                raise _bad("invalid_field_type", "registration must be an object")
        elif key == "custom_reconnect":
            if not isinstance(value, bool):
                raise _bad("invalid_field_type", "custom_reconnect must be a boolean")
        elif key in _STRING_ARRAYS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _bad("invalid_field_type", f"{key} must be an array of strings")
        elif not isinstance(value, str):
            raise _bad("invalid_field_type", f"{key} must be a string")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _check_sip_username(value: str) -> None:
    if not SIP_USERNAME_CHARS.fullmatch(value):
        raise _bad(
            "invalid_sip_username",
            "sip_username may only contain alphanumeric characters and hyphens",
        )
    if not SIP_USERNAME_MIN <= len(value) <= SIP_USERNAME_MAX:
        raise _bad(
            "invalid_sip_username",
            f"sip_username must be {SIP_USERNAME_MIN}-{SIP_USERNAME_MAX} characters long",
        )


def check_sip_password(value: str) -> None:
    """Enforce the password rules (length, printable characters)."""
    if len(value) < SIP_PASSWORD_MIN:
        raise _bad("invalid_sip_password", "sip_password must be at least 8 characters")
    if len(value) > SIP_PASSWORD_MAX or not value.isprintable():
        raise _bad(
            "invalid_sip_password",
            f"sip_password must be at most {SIP_PASSWORD_MAX} printable characters",
        )


def check_url(
    value: str, *, field: str, code: str, schemes: tuple[str, str], allow_insecure: bool
) -> str:
    """An absolute URL with the secure scheme ``schemes[0]`` (also ``schemes[1]`` when insecure
    URLs are allowed), a host to connect to (``connectable_host``), a port from 1 to 65535 (or
    none) and no credentials; else 400 ``code``."""
    allowed = schemes if allow_insecure else schemes[:1]
    article = "an" if schemes[0][0] in "aeiouh" else "a"  # "an https://", "a wss://"
    message = (
        f"{field} must be {article} {schemes[0]}:// (or {schemes[1]}://) URL"
        if allow_insecure
        else f"{field} must be {article} {schemes[0]}:// URL"
    )
    if len(value) > URL_MAX or any(c.isspace() for c in value):
        raise _bad(code, message)
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise _bad(code, message) from None
    if parts.scheme.lower() not in allowed or not parts.hostname or parts.username is not None:
        raise _bad(code, message)
    if parts.port == 0 or not connectable_host(parts):  # port 0: reserved, nothing listens
        raise _bad(code, message)
    return value


def _check_endpoint(value: str, allow_insecure: bool) -> None:
    check_url(
        value,
        field="custom_endpoint",
        code="invalid_custom_endpoint",
        schemes=("wss", "ws"),
        allow_insecure=allow_insecure,
    )


def _check_headers(value: dict[str, str]) -> None:
    if len(value) > MAX_CUSTOM_HEADERS:
        raise _bad("invalid_field", f"custom_headers may hold at most {MAX_CUSTOM_HEADERS} headers")
    for name, val in value.items():
        if not HEADER_TOKEN.fullmatch(name) or name.lower() in RESERVED_HEADERS:
            raise _bad("invalid_field", "custom_headers has an invalid or reserved header name")
        if name.lower().startswith("sec-websocket-"):
            raise _bad("invalid_field", "custom_headers has an invalid or reserved header name")
        if len(val) > HEADER_VALUE_MAX or any(c in val for c in "\r\n\0"):
            raise _bad("invalid_field", "custom_headers has an invalid header value")


def _check_values(fields: dict[str, Any], allow_insecure: bool) -> None:
    """Length and format checks shared by create and update (``fields`` has no None values)."""
    if "name" in fields and len(fields["name"]) > NAME_MAX:
        raise _bad("invalid_field", f"name must be at most {NAME_MAX} characters")
    if "system_prompt" in fields and len(fields["system_prompt"]) > SYSTEM_PROMPT_MAX:
        raise _bad("invalid_field", f"system_prompt must be at most {SYSTEM_PROMPT_MAX} characters")
    for key in ("openai_api_key", "elevenlabs_api_key"):
        if key in fields:
            v = fields[key]
            if len(v) > API_KEY_MAX or not v.isprintable() or any(c.isspace() for c in v):
                raise _bad("invalid_field", f"{key} is not a well-formed API key")
    for key, limit in (("openai_model", OPENAI_MODEL_MAX), ("openai_voice", OPENAI_VOICE_MAX)):
        if key in fields and len(fields[key]) > limit:
            raise _bad("invalid_field", f"{key} must be at most {limit} characters")
    for key in ("elevenlabs_agent_id", "openai_model", "openai_voice"):
        if key in fields and not IDENT.fullmatch(fields[key]):
            raise _bad("invalid_field", f"{key} has invalid characters")
    if "custom_protocol" in fields and fields["custom_protocol"] not in CUSTOM_PROTOCOLS:
        raise _bad("invalid_field", "custom_protocol must be one of: telepath, twilio")
    if "custom_endpoint" in fields:
        _check_endpoint(fields["custom_endpoint"], allow_insecure)
    if "custom_headers" in fields:
        _check_headers(fields["custom_headers"])
    if "sip_digest_algorithms" in fields:
        fields["sip_digest_algorithms"] = normalize_digest_algorithms(
            fields["sip_digest_algorithms"]
        )
    if "allowed_addresses" in fields:
        fields["allowed_addresses"] = normalize_addresses(fields["allowed_addresses"])
    if "inbound_numbers" in fields:
        fields["inbound_numbers"] = normalize_numbers(fields["inbound_numbers"])
    if "allowed_caller_numbers" in fields:
        callers = normalize_numbers(fields["allowed_caller_numbers"], "allowed_caller_numbers")
        fields["allowed_caller_numbers"] = ",".join(callers) or None
    if "codecs" in fields:
        fields["codecs"] = normalize_codecs(fields["codecs"])
    if "forward_sip_headers" in fields:
        fields["forward_sip_headers"] = normalize_header_names(fields["forward_sip_headers"])
    if "media_encryption" in fields and fields["media_encryption"] not in MEDIA_ENCRYPTION:
        raise _bad("invalid_field", "media_encryption must be one of: allowed, required, disabled")
    if "sip_auth" in fields and fields["sip_auth"] not in SIP_AUTH_MODES:
        raise _bad("invalid_field", "sip_auth must be one of: digest, address")
    if "registration" in fields:
        fields["registration"] = parse_registration(fields["registration"])


def _at_most(values: list[str], limit: int, field: str, what: str) -> None:
    """400 ``invalid_field`` when a list setting has more than ``limit`` entries."""
    if len(values) > limit:
        raise _bad("invalid_field", f"{field} may hold at most {limit} {what}")


def normalize_header_names(values: list[str]) -> str | None:
    """``["X-Customer-Id", "x-customer-id"]`` → ``"X-Customer-Id"``: SIP header names (RFC
    3261 §25.1 token), as first written, case-insensitive duplicates dropped; [] clears."""
    _at_most(values, MAX_FORWARDED_HEADERS, "forward_sip_headers", "header names")
    names: list[str] = []
    for value in values:
        name = value.strip()
        if not HEADER_TOKEN.fullmatch(name) or len(name) > 64:
            raise _bad(
                "invalid_field", f"forward_sip_headers entry '{value[:64]}' is not a header name"
            )
        if name.lower() in UNFORWARDABLE_HEADERS:
            raise _bad("invalid_field", f"{name} cannot be forwarded to an agent")
        if name.lower() not in (n.lower() for n in names):
            names.append(name)
    return ",".join(names) or None


def normalize_codecs(values: list[str]) -> str | None:
    """``["pcma", "PCMU"]`` → ``"PCMA,PCMU"`` (preferred first); an empty list clears."""
    names = [value.strip().upper() for value in values]
    if any(n not in CODECS for n in names) or len(set(names)) != len(names):
        listed = f"{', '.join(CODECS[:-1])} and/or {CODECS[-1]}"
        raise _bad("invalid_field", f"codecs must list {listed}, each once")
    return ",".join(names) or None


def normalize_numbers(values: list[str], field: str = "inbound_numbers") -> list[str]:
    """``["+1 415-555-0100", "+14155550100"]`` → ``["+14155550100"]``: E.164 with its ``+``
    (visual separators dropped), in order, duplicates dropped; an empty list clears."""
    _at_most(values, MAX_INBOUND_NUMBERS, field, "numbers")
    numbers: list[str] = []
    for value in values:
        number = canonical_number(value, plus_required=True) if ";" not in value else None
        if number is None:
            raise _bad(
                "invalid_field",
                f"{field} entry '{value[:64]}' is not an E.164 number "
                "(a + and 6-15 digits, e.g. +14155550100)",
            )
        if number not in numbers:
            numbers.append(number)
    return numbers


def normalize_addresses(values: list[str]) -> str | None:
    """``["192.0.2.7", "2001:DB8::/32"]`` → ``"192.0.2.7/32,2001:db8::/32"`` (canonical, in
    order, duplicates dropped); an empty list → None (any source). Host bits set in a network
    are an error: ``192.0.2.7/24`` is ambiguous (a typo for ``/32``, or ``192.0.2.0/24``?)."""
    _at_most(values, MAX_ALLOWED_ADDRESSES, "allowed_addresses", "addresses or networks")
    networks: list[str] = []
    for value in values:
        try:
            network = str(ip_network(value.strip()))
        except ValueError:
            raise _bad(
                "invalid_field",
                f"allowed_addresses entry '{value[:64]}' is not an IP address or network (CIDR)",
            ) from None
        if network not in networks:
            networks.append(network)
    return ",".join(networks) or None


def normalize_digest_algorithms(value: str) -> str:
    """``"md5, sha-256"`` → ``"MD5,SHA-256"``; order is the challenge order (preferred first)."""
    names = [part.strip().upper() for part in value.split(",")]
    if not names or any(n not in DIGEST_ALGORITHMS for n in names) or len(set(names)) != len(names):
        raise _bad(
            "invalid_field",
            "sip_digest_algorithms must list SHA-256 and/or MD5, comma-separated, preferred first",
        )
    return ",".join(names)


def _check_applicable(fields: dict[str, Any], provider: str) -> None:
    for key in fields:
        owner = PROVIDER_FIELDS.get(key)
        if owner is not None and owner != provider:
            raise _bad("invalid_field", f"{key} does not apply when ai_provider is '{provider}'")


@dataclass
class TrunkCreateInput:
    """A validated create request. Secrets are still plaintext here, in memory only."""

    name: str
    ai_provider: str
    sip_username: str
    sip_password: str
    options: dict[str, Any] = field(default_factory=dict)


def parse_create(raw: bytes, *, allow_insecure: bool) -> TrunkCreateInput:
    """Validate a ``POST /v1/trunks`` body; raise the documented ApiError on the first problem."""
    body = parse_json_object(raw)
    _check_types(body, CREATE_FIELDS)
    for key in ("name", "ai_provider", "sip_username", "sip_password"):
        if _blank(body.get(key)):
            raise _bad("missing_required_field", f"{key} is required")
    provider = body["ai_provider"]
    if provider not in PROVIDERS:
        raise _bad("invalid_ai_provider", "ai_provider must be one of: openai, elevenlabs, custom")
    _check_sip_username(body["sip_username"])
    check_sip_password(body["sip_password"])
    for key in REQUIRED_BY_PROVIDER[provider]:
        if _blank(body.get(key)):
            raise _bad("missing_required_field", f"{key} is required")
    present = {k: v for k, v in body.items() if v is not None}
    _check_applicable(present, provider)
    present["name"] = present["name"].strip()
    _check_values(present, allow_insecure)
    options = {k: v for k, v in present.items() if k not in CREATE_FIELDS[:4]}
    return TrunkCreateInput(
        name=present["name"],
        ai_provider=provider,
        sip_username=body["sip_username"],
        sip_password=body["sip_password"],
        options=options,
    )


def parse_update(raw: bytes, *, provider: str, allow_insecure: bool) -> dict[str, Any]:
    """Validate a ``PATCH /v1/trunks/{id}`` body for a trunk of ``provider``.

    Returns:
        The fields to change; a ``None`` value means "clear" (only for clearable fields).
    """
    body = parse_json_object(raw)
    _check_types(body, UPDATE_FIELDS)
    for key, value in body.items():
        if key in CLEARABLE:
            continue
        if _blank(value):
            raise _bad("invalid_field", f"{key} cannot be empty")
    _check_applicable(body, provider)
    if "status" in body and body["status"] not in SETTABLE_STATUSES:
        raise _bad("invalid_field", "status must be one of: active, inactive")
    if "name" in body:
        body["name"] = body["name"].strip()
    present = {k: v for k, v in body.items() if v is not None}
    _check_values(present, allow_insecure)  # validates, and normalises some values in place
    body.update(present)
    return body
