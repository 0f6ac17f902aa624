"""The TLS client context that every connection to an agent shares.

Building a context (``ssl.create_default_context``) parses the system's CA bundle: about 33 ms
of CPU, measured, and it ran on the event loop for every call to a ``wss://`` agent (OpenAI,
ElevenLabs, most custom agents), stalling the media of every live call. A context is made for
sharing: it holds settings and trust, each connection has its own state. So one is built per
trust setting and reused; the gateway builds it at start, before the first call.

OpenSSL reads ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` when a context loads the default paths, so
the cache is keyed by them: a changed setting gets a context that honours it.
"""

from __future__ import annotations

import functools
import os
import ssl

__all__ = ["client_context"]


def client_context() -> ssl.SSLContext:
    """The verifying client context for the current CA settings (certificates and hostnames)."""
    return _context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    # The arguments are the cache key only: create_default_context reads the same settings.
    return ssl.create_default_context()
