"""A TCP proxy in front of a real database server that a test can cut and restore: an outage
(a restart, a failover, a network partition) without stopping the shared server."""

from __future__ import annotations

import asyncio
import contextlib

from sqlalchemy.engine import make_url


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``. ``cut()`` drops every connection and refuses
    new ones (they are closed on accept); ``freeze()`` keeps every connection open but passes
    nothing on either way, and new ones get nothing either (a server or network gone silent);
    ``restore()`` forwards again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.up = True
        self.frozen = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @classmethod
    def in_front_of(cls, database_url: str) -> TcpProxy:
        """A proxy to the server of ``database_url`` (:meth:`through` then names it)."""
        server = make_url(database_url)
        return cls((server.host or "127.0.0.1", server.port or 5432))

    def through(self, database_url: str) -> str:
        """``database_url`` by way of this proxy."""
        proxied = make_url(database_url).set(host="127.0.0.1", port=self.port)
        return proxied.render_as_string(hide_password=False)

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def cut(self) -> None:
        self.up = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def freeze(self) -> None:
        self.frozen = True

    def restore(self) -> None:
        self.up = True
        self.frozen = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        if self.frozen:  # accepted, and then silence
            self._writers.add(writer)
            with contextlib.suppress(OSError):
                while await reader.read(65536):
                    pass
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer, self), _pipe(up_reader, writer, self))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: TcpProxy
) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            if proxy.frozen:
                continue  # swallowed
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
