"""One HTTP client, kept open, for the providers' REST requests made while a call is set up.

An ElevenLabs agent with an API key costs a REST request before every call: the signed
conversation URL. With a client per call, each request opened its own TCP and TLS connection to
the API — two round trips more before the caller hears anything (tens to hundreds of
milliseconds to a distant region) and a TLS handshake's CPU on the event loop. One client per
gateway keeps connections alive between calls (httpx's pool), so a call set up within
``KEEPALIVE_S`` of the last one reuses a connection.

The gateway owns it (``cli/gateway.py`` opens it, ``Gateway.stop`` closes it) and call control
hands it to the bridges in their config; a bridge without one (tests, scripts) makes its own
client per request, as before. The TLS context is the shared one (``bridges/tls.py``); when that
changes (``SSL_CERT_FILE``), so does the client.
"""

from __future__ import annotations

import ssl

import httpx

from telepath.bridges.tls import client_context

__all__ = ["SharedHttpClient"]

KEEPALIVE_S = 60.0  # idle connections kept this long (the APIs' own idle timeouts are longer)
MAX_IDLE = 32  # idle connections kept per client
DEFAULT_TIMEOUT_S = 10.0  # requests pass their own


class SharedHttpClient:
    """The gateway's HTTP client for set-up requests; :meth:`get` it per request."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None
        self._context: ssl.SSLContext | None = None
        self._retired: list[httpx.AsyncClient] = []

    def get(self) -> httpx.AsyncClient:
        """The client for the current CA settings (made on first use)."""
        context = client_context()
        if self._client is None or context is not self._context:
            if self._client is not None:
                self._retired.append(self._client)  # in-flight requests finish; closed at stop
            self._client = httpx.AsyncClient(
                verify=context,
                timeout=DEFAULT_TIMEOUT_S,
                limits=httpx.Limits(
                    max_keepalive_connections=MAX_IDLE, keepalive_expiry=KEEPALIVE_S
                ),
            )
            self._context = context
        return self._client

    async def aclose(self) -> None:
        """Close every connection (the gateway stops)."""
        clients = [*self._retired, *([self._client] if self._client is not None else [])]
        self._client, self._context, self._retired = None, None, []
        for client in clients:
            await client.aclose()
