"""One HTTP client, kept open, for the providers' REST requests made while a call is set up.

An ElevenLabs agent with an API key costs a REST request before every call: the signed
conversation URL. With a client per call, each request opened its own TCP and TLS connection to
the API — two round trips more before the caller hears anything (tens to hundreds of
milliseconds to a distant region) and a TLS handshake's CPU on the event loop. One client per
gateway keeps connections alive between calls, so a call set up within ``KEEPALIVE_S`` of the
last one reuses a connection.

The client is aiohttp, as the webhook dispatcher's (``webhooks/dispatcher.py``): this request
runs on the event loop that carries the calls' media, and httpx costs about ten times more CPU
per request. The gateway owns it (``cli/gateway.py`` makes it, ``Gateway.stop`` closes it) and
call control hands it to the bridges in their config; without one (tests, scripts) a bridge
makes a session for its one request. The TLS context is the shared one (``bridges/tls.py``); when
that changes (``SSL_CERT_FILE``), so does the session.
"""

from __future__ import annotations

import ssl

import aiohttp

from telepath.bridges.tls import client_context

__all__ = ["SharedHttpClient", "new_session", "read_body"]

KEEPALIVE_S = 60.0  # idle connections kept this long (the APIs' own idle timeouts are longer)


def new_session(limit: int = 100, *, auto_decompress: bool = True) -> aiohttp.ClientSession:
    """A session verifying with the shared TLS context, honouring ``HTTPS_PROXY`` and friends,
    with at most ``limit`` connections (also the webhook dispatcher's)."""
    connector = aiohttp.TCPConnector(
        limit=limit, ssl=client_context(), keepalive_timeout=KEEPALIVE_S
    )
    # No cookies: one session serves every account's webhook deliveries (and key checks), so a
    # cookie one account's receiver set would go to another account's endpoint on that host.
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=True,
        auto_decompress=auto_decompress,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def read_body(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body of ``resp``, or ``None`` when it is longer than ``limit`` bytes.

    ``resp.content.read(n)`` returns what has arrived so far, up to ``n`` bytes, not ``n``
    bytes: a body that came in two TCP segments or TLS records (through a proxy, on a slow link)
    was read in part. This reads until the end of the body, and no more than ``limit + 1``
    bytes of it, so an answer cannot make the gateway hold more. The caller bounds the time.
    """
    body = bytearray()
    while len(body) <= limit:
        chunk = await resp.content.read(limit + 1 - len(body))
        if not chunk:  # the end of the body
            return bytes(body)
        body += chunk
    return None


class SharedHttpClient:
    """The gateway's HTTP session for set-up requests; :meth:`get` it per request."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._context: ssl.SSLContext | None = None
        self._retired: list[aiohttp.ClientSession] = []

    def get(self) -> aiohttp.ClientSession:
        """The session for the current CA settings (made on first use, on the event loop)."""
        context = client_context()
        if self._session is None or context is not self._context:
            if self._session is not None:
                self._retired.append(self._session)  # in-flight requests finish; closed at stop
            self._session = new_session()
            self._context = context
        return self._session

    async def aclose(self) -> None:
        """Close every connection (the gateway stops)."""
        sessions = [*self._retired, *([self._session] if self._session is not None else [])]
        self._session, self._context, self._retired = None, None, []
        for session in sessions:
            await session.close()
