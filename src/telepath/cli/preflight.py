"""What ``telepath serve`` checks before it opens anything: settings that pass ``Settings``'
own checks, yet that a part of the gateway refuses when it is built or, worse, at every call.

``Settings`` (``config.py``) sits below every other layer and cannot know which codec names
the SDP code supports, and the like. Rather than a copy of those rules there, each check here
builds the part the way the gateway does, with the same function, and reports what it raises
under the variable's name. ``telepath serve`` prints each as ``configuration error: …`` and
exits 2 — before the database is migrated or a master key generated, not with a traceback
once they were, nor at every call.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from pathlib import Path

from telepath.calls.config import CallControlConfig
from telepath.cli.gateway import NonceKeys, defence_policy, digest_authenticator, tls_context
from telepath.cli.workers import worker_settings
from telepath.config import Settings
from telepath.errors import ConfigurationError
from telepath.transport.ports import RtpPortAllocator


def problems(settings: Settings) -> list[str]:
    """Every setting the gateway would refuse, as ``TELEPATH_X: reason`` lines."""
    found: list[str] = []

    def check(variable: str, build: Callable[[], object]) -> None:
        try:
            build()
        except (ValueError, ConfigurationError) as exc:
            found.append(f"{variable}: {exc}")

    check("TELEPATH_SIP_CODECS", lambda: CallControlConfig.from_settings(settings, "127.0.0.1"))
    check("TELEPATH_SIP_ALLOWLIST", lambda: defence_policy(settings))
    check(
        "TELEPATH_SIP_DIGEST_ALGORITHMS",
        lambda: digest_authenticator(settings, NonceKeys(bytes(32))),
    )
    check("TELEPATH_RTP_PORT_MIN..MAX", lambda: _rtp_ports(settings))
    found.extend(_tls(settings))
    if settings.sip_enabled:
        check("TELEPATH_SIP_HOST", lambda: _local_address(settings.sip_host))
    check("TELEPATH_HTTP_HOST", lambda: _local_address(settings.http_host))
    return found


def _local_address(host: str) -> None:
    """``host`` (an IP address, or for the HTTP API a name too: ``Settings``) can be bound
    here, as the SIP listeners, the RTP ports and the HTTP server bind it: one not of this host
    was a traceback from the SIP listener, after the database was migrated and the first API
    key printed, and for the HTTP API uvicorn's bind error once SIP was up. Any free port (0):
    the address is what is checked, and nothing stays bound. A name is bound as it resolves
    (each of its addresses is tried, as the HTTP server does)."""
    try:
        found = socket.getaddrinfo(host, 0, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise ValueError(f"{host} does not resolve here ({exc.strerror or exc})") from None
    refused = OSError(errno.EADDRNOTAVAIL, "no address")
    for family, kind, proto, _, address in found:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.bind(address)
            return
        except OSError as exc:
            refused = exc
    why = refused.strerror or str(refused)
    if refused.errno == errno.EADDRNOTAVAIL:
        raise ValueError(
            f"{host} is not an address of this host ({why}): use one of its addresses, "
            "or 0.0.0.0 / :: for every interface"
        )
    raise ValueError(f"{host} cannot be bound here ({why})")


def _rtp_ports(settings: Settings) -> None:
    """The RTP allocator of each SIP process, on its share of the range as ``telepath serve``
    splits it (``worker_settings``): each must hold a pair (RFC 3550 §11), or every call of
    that process is refused (503)."""
    count = settings.sip_workers
    for index in range(count):
        share = worker_settings(settings, index, count)
        try:
            RtpPortAllocator.from_settings(share)
        except ValueError:
            low, high = share.rtp_port_min, share.rtp_port_max
            whose = f" (SIP worker {index + 1} of {count}'s share)" if count > 1 else ""
            raise ValueError(
                f"{low}..{high}{whose} holds no even port with the odd one above it "
                "(RTP takes an even port, RTCP the next)"
            ) from None


def _tls(settings: Settings) -> list[str]:
    """The TLS listener's context, loaded as ``start_gateway`` loads it (a missing file was a
    traceback there); a file that is not there is named first."""
    files = {
        "TELEPATH_SIP_TLS_CERT": settings.sip_tls_cert,
        "TELEPATH_SIP_TLS_KEY": settings.sip_tls_key,
    }
    missing = [
        f"{variable}: {path} is not a file"
        for variable, path in files.items()
        if path is not None and not Path(path).is_file()
    ]
    if missing:
        return missing
    try:
        tls_context(settings)
    except OSError as exc:  # unreadable; ssl.SSLError: not PEM, the key not the cert's
        return [
            "TELEPATH_SIP_TLS_CERT, TELEPATH_SIP_TLS_KEY: not a certificate chain and its "
            f"private key ({exc})"
        ]
    return []
