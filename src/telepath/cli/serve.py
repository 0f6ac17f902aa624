"""``telepath serve``: the HTTP API, the SIP/media gateway, webhooks and retention in one process.

SIGTERM/SIGINT: the HTTP server stops (requests in progress get ``HTTP_SHUTDOWN_GRACE_S``) and,
from the signal on, the gateway drains — new INVITEs get 503 while live calls may finish for
``TELEPATH_SIP_DRAIN_TIMEOUT_S``; the rest are ended with BYE and recorded with reason
``shutdown``; outbound registrations are removed. The SIP listeners and the gateway's tasks
stay until the HTTP server is done too. The signals are taken from before the gateway
starts, not only once the HTTP server runs: the SIP listener answers calls while the start goes
on (journal replay, closing a dead run's calls, SIP workers coming up — up to
``READY_TIMEOUT_S``), and a signal then used to kill the process with those calls up (SIGTERM)
or cancel the start without stopping the gateway (SIGINT). Now the start stops after the step
under way (the wait for the workers at once; the previous run's recovery is finished first) and
the same graceful stop follows.

A run that died instead (SIGKILL, crash) left its live calls' records open: the next run on the
same data directory closes them as ``lost`` (``cli/instances.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from types import FrameType, TracebackType
from typing import Any, TypeVar

import uvicorn

from telepath.api.app import create_app
from telepath.api.state import ApiState
from telepath.cli.gateway import Gateway, NonceKeys, start_gateway
from telepath.cli.instances import InstanceFile, claim_and_recover, close_calls_of, new_instance_id
from telepath.cli.runtime import bootstrap_first_key, open_state
from telepath.cli.workers import WorkerPool, worker_settings
from telepath.config import Settings
from telepath.log import configure_logging

logger = logging.getLogger("telepath")

T = TypeVar("T")

# On a stop, how long the HTTP server waits for requests in progress before cancelling them. The
# API's requests are short (no streaming, no long polls); one whose client stalls (a body that
# never finishes arriving) used to hold up server.serve() for ever. A fixed bound, not the drain
# time; the gateway's drain does not wait for it (it begins at the signal: ``_serve``).
HTTP_SHUTDOWN_GRACE_S = 5  # uvicorn takes whole seconds


class HttpServer(uvicorn.Server):
    """uvicorn's server, calling ``on_signal`` as soon as SIGINT/SIGTERM arrives.

    uvicorn takes those signals while it serves and only returns once its requests in progress
    are done (up to ``HTTP_SHUTDOWN_GRACE_S``): the gateway's drain begins from ``on_signal``
    instead, else the gateway would take new calls and keep its registrations meanwhile. With
    SIP workers, the signal often went to the whole process group (systemd's
    ``KillMode=control-group``, Ctrl-C): the workers drain and exit meanwhile, and the pool must
    already know the front is stopping, else it would take their exits for crashes and start
    them again in the middle of the shutdown.
    """

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_signal = on_signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """uvicorn's signal handler, told first."""
        self._on_signal()
        super().handle_exit(sig, frame)


def install_event_loop() -> str:
    """Use uvloop when it is installed (the media path needs it); return the loop's name."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def settle_heap() -> None:
    """Move everything allocated at start-up out of the garbage collector's sight.

    Imports, the ORM mappers and FastAPI's routes are a few hundred thousand long-lived objects;
    every full collection would walk them again (measured: a few percent of the CPU at 100
    calls/s). A call's short-lived objects still get collected as usual.
    """
    gc.collect()
    gc.freeze()


class StopSignals:
    """SIGINT and SIGTERM for as long as ``serve`` holds the gateway: remembered, not fatal.

    A signal wakes what the start is waiting for (:meth:`unless_requested`) and, once there is an
    HTTP server, tells it too. While that server runs, uvicorn takes the signals itself, and
    re-raises them after shutting down: they land here then.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: list[int] = []
        self.server: uvicorn.Server | None = None
        self.on_stop: Callable[[], None] | None = None  # called at the first signal too
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def __enter__(self) -> StopSignals:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return bool(self.received)

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        self.received.append(sig)
        if self.on_stop is not None:  # the SIP workers' exits from now on are no crashes
            self.on_stop()
        if self.server is not None:  # made, but its own handlers are not in place yet
            self.server.should_exit = True
        # a signal handler runs between two bytecodes of the loop's thread: the loop is woken
        # through its self-pipe, as from another thread
        self._loop.call_soon_threadsafe(self._event.set)

    async def unless_requested(self, step: Awaitable[T]) -> T | None:
        """``step``'s result, or None if a stop is asked for first (``step`` is cancelled)."""
        task = asyncio.ensure_future(step)
        stopped = asyncio.ensure_future(self._event.wait())
        try:
            await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return None if task.cancelled() else task.result()


def worker_pool(
    settings: Settings,
    state: ApiState,
    gateway: Gateway,
    nonce_secrets: list[bytes],
    instances: InstanceFile | None = None,
) -> WorkerPool:
    """SIP workers 1 .. N-1 beside this process's gateway (``cli/workers.py``), wired to it but
    not started: the caller holds the pool before waiting for it, so that a stop during that
    wait can stop the workers already started."""
    udp = gateway.server.udp_fileno()
    if udp is None:
        raise RuntimeError("TELEPATH_SIP_WORKERS needs the SIP UDP listener")
    ports = dict(gateway.server.core.config.contact_ports)
    sink = gateway.manager.sink

    async def exited(instance_id: str) -> int:
        return await close_calls_of(
            [instance_id], state.sessions, sink, state.metrics, replay=gateway.replay_journals
        )

    pool = WorkerPool(
        settings,
        udp,
        gateway.server.bound["UDP"],
        ports,
        nonce_secrets,
        state.metrics,
        on_wake=gateway.dispatcher.wake,
        instances=instances,
        on_exit=exited,
        on_stream_reply=gateway.server.write_stream,
        guard=gateway.manager.guard,  # counts every worker's auth failures, bans for all
    )
    # Route first: until a worker serves, datagrams of its calls are dropped (the caller
    # retransmits), not answered here — the dialog would then live in the wrong process.
    gateway.server.router = pool.forwarder
    gateway.server.stream_router = pool.forwarder.stream
    # An idle connection a worker's call signals over is kept (this process holds no dialog
    # of it): the workers are asked, and one that uses it claims it. So is one an outbound
    # registration lets go (``SipServer.let_go``): the registrar may send calls on it.
    gateway.server.ask_workers = pool.forwarder.ask
    return pool


async def start_workers(settings: Settings, state: ApiState, pool: WorkerPool) -> None:
    """Start ``pool``'s workers, wait until each serves, then let the API see them."""
    await pool.start()
    state.trunk_removed.append(pool.trunk_removed)
    state.more_metrics = pool.metrics
    state.workers_ready = pool.all_up
    logger.info("SIP: %d worker processes share the UDP port", settings.sip_workers)


async def serve(settings: Settings) -> None:
    """Run every server until SIGINT/SIGTERM."""
    async with open_state(settings) as state:
        issued = await bootstrap_first_key(state)
        if issued is not None:
            # Printed to stdout once, deliberately not logged: it is the only copy of the key.
            print(
                "\nTelepath: created account 'default' and its first API key "
                "(shown only this once):\n\n"
                f"    {issued.plaintext}\n\n"
                "Use it as 'Authorization: Bearer <key>'. More keys: telepath keys create\n",
                flush=True,
            )
        # From before the SIP listener takes its first call (module docstring).
        with StopSignals() as stop:
            await _serve(settings, state, stop)


async def _serve(settings: Settings, state: ApiState, stop: StopSignals) -> None:
    """Start step by step (none after a stop is asked for), serve, then stop: the gateway's
    graceful stop runs on every way out once it has started — a signal, the HTTP server failing
    to start (uvicorn exits on a port it cannot bind), an error in a later step."""
    gateway: Gateway | None = None
    pool: WorkerPool | None = None
    instances = InstanceFile(settings.data_dir)
    recovery: asyncio.Task[None] | None = None
    heartbeat: asyncio.Task[None] | None = None
    unwatch_gc: Callable[[], None] | None = None
    loop = asyncio.get_running_loop()
    http_done = asyncio.Event()  # the HTTP server has returned (or never ran)
    stopping: asyncio.Task[None] | None = None

    def stop_gateway() -> asyncio.Task[None] | None:
        """Begin the gateway's graceful stop (once), the SIP workers' beside it: new INVITEs
        get 503 and the registrations go from now on. Its listeners and tasks stay until the
        HTTP server is done too (a request in progress may still reach the gateway)."""
        nonlocal stopping
        if stopping is None and gateway is not None:
            logger.info("draining calls (up to %.0f s)", settings.sip_drain_timeout_s)
            workers = pool.stop(settings.sip_drain_timeout_s) if pool is not None else None
            stopping = asyncio.create_task(
                gateway.stop(
                    settings.sip_drain_timeout_s, alongside=_both(workers, http_done.wait())
                )
            )
        return stopping

    def signalled() -> None:
        """SIGINT/SIGTERM while the HTTP server runs (in the signal handler, between two
        bytecodes of the loop's thread): the drain begins now, not once uvicorn has waited
        for the requests in progress (up to ``HTTP_SHUTDOWN_GRACE_S``)."""
        if pool is not None:
            pool.stopping()
        loop.call_soon_threadsafe(stop_gateway)

    try:
        if settings.sip_enabled:
            instance_id = new_instance_id()
            instances.add(instance_id)
            nonce_secrets = [os.urandom(32) for _ in range(settings.sip_workers)]
            gateway = await start_gateway(
                worker_settings(settings, 0, settings.sip_workers),
                state,
                nonce_keys=NonceKeys.split(nonce_secrets, 0),
                instance_id=instance_id,
            )
            # before the workers start (they inherit the lock) and before the API serves
            left = instances.claim()  # the previous run's process ids
            sink = gateway.manager.sink
            if left is None:  # a previous run's process still lives: later
                recovery = asyncio.create_task(
                    claim_and_recover(
                        instances,
                        state.sessions,
                        sink,
                        state.metrics,
                        replay=gateway.replay_journals,
                    )
                )
            else:
                # Every journal a stopped process left here, first: a clean stop during a
                # database outage leaves one, with no id left in the instances file. Finished
                # even after a stop is asked for: the claim has replaced the previous run's ids
                # in the instances file with ours, and a record not closed now would stay open.
                await gateway.replay_journals()
                if left:
                    ended = instances.lost_calls_end()
                    await close_calls_of(left, state.sessions, sink, state.metrics, ended=ended)
            heartbeat = asyncio.create_task(instances.beat_forever())
            if settings.sip_workers > 1 and not stop.requested:
                pool = worker_pool(settings, state, gateway, nonce_secrets, instances)
                stop.on_stop = pool.stopping
                # up to READY_TIMEOUT_S: given up at once on a stop (pool.stop ends them)
                await stop.unless_requested(start_workers(settings, state, pool))
        if stop.requested:
            logger.info("stop requested while starting: the rest of the start is skipped")
            return
        app = create_app(state)
        settle_heap()
        unwatch_gc = state.metrics.watch_gc()
        config = uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.http_port,
            # None: uvicorn's own loggers ("Uvicorn running on", a port it cannot bind) keep
            # no handler of their own and reach the root one of configure_logging, in
            # TELEPATH_LOG_FORMAT with a call id field, like every other line.
            log_config=None,
            log_level=settings.log_level.lower(),
            # No access log: a request line's path and query may carry phone numbers, which
            # never appear at INFO (README, Observability).
            access_log=False,
            # No WebSocket protocol: the API serves none, and uvicorn logged each upgrade it
            # refused at INFO with the request's path and query, access log or not.
            ws="none",
            lifespan="off",
            timeout_graceful_shutdown=HTTP_SHUTDOWN_GRACE_S,
        )
        server = HttpServer(config, on_signal=signalled)
        stop.server = server
        logger.info(
            "HTTP API on http://%s:%d (database: %s)",
            settings.http_host,
            settings.http_port,
            settings.effective_database_url.split("://", 1)[0],
        )
        if not stop.requested:
            await server.serve()
    finally:
        http_done.set()
        draining = stop_gateway()  # begun at the signal, or now (any other way out)
        if draining is not None:
            await draining
        for task in (recovery, heartbeat):
            if task is not None:
                task.cancel()
        instances.close()  # every call was ended: the next run has nothing to close
        if unwatch_gc is not None:
            unwatch_gc()


async def _both(first: Awaitable[object] | None, second: Awaitable[object]) -> None:
    """``first`` (if any) and ``second``, at once."""
    await asyncio.gather(*(a for a in (first, second) if a is not None))


def run_serve(settings: Settings) -> None:
    """Entry point used by the CLI."""
    loop_name = install_event_loop()
    configure_logging(settings.log_level, settings.log_format)
    logger.info("starting Telepath on %s", loop_name)
    asyncio.run(serve(settings))
