"""Builds the SIP/media/agent gateway from settings and the outer ring's implementations.

This is the one place where call control meets the database and webhooks: it hands
``DbTrunkDirectory``, ``DbCallRecorder`` and ``DbEventSink`` to :class:`CallManager` through the
``calls.ports`` interfaces, so the hot path never imports the outer ring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from telepath.api.state import ApiState
from telepath.bridges.http_client import SharedHttpClient
from telepath.bridges.tls import client_context
from telepath.calls.config import CallControlConfig
from telepath.calls.manager import CallManager, drain_overrun_s
from telepath.calls.registrations import Registrations
from telepath.cli import instances
from telepath.cli.workers import FrontCountedGuard
from telepath.clock import MonotonicClock
from telepath.config import Settings
from telepath.db import instance_store
from telepath.db.call_recorder import JOURNAL as RECORDS_JOURNAL
from telepath.db.call_recorder import DbCallRecorder, retention_loop
from telepath.db.registration_store import DbRegistrationStore
from telepath.db.trunk_directory import DbTrunkDirectory, on_trunks_changed
from telepath.db.write_journal import journal_owners, journal_path, journals_of
from telepath.sip.auth import Algorithm, DigestAuthenticator
from telepath.sip.defence import DefencePolicy, SourceGuard
from telepath.sip.ua import UaConfig, UserAgentCore
from telepath.transport import media_pacer
from telepath.transport.dns import SipLocator
from telepath.transport.ports import RtpPortAllocator
from telepath.transport.receive_backlog import BacklogMonitor
from telepath.transport.sip_fanout import OrderedSender
from telepath.transport.sip_server import ListenAddress, LoopClock, SipServer, StreamLimits
from telepath.transport.stun import StunClient
from telepath.webhooks.dispatcher import WebhookDispatcher
from telepath.webhooks.sink import JOURNAL as EVENTS_JOURNAL
from telepath.webhooks.sink import DbEventSink

log = logging.getLogger(__name__)

TASK_STOP_S = 5.0  # at shutdown: how long a background task may take to end once told to
WRITERS_CLOSE_S = 5.0  # at shutdown: the last attempt for writes kept through a database outage
SETTLE_S = 0.2  # at shutdown, after the drain: BYE retransmissions and final records


def advertised_address(settings: Settings) -> str:
    """``TELEPATH_PUBLIC_ADDRESS``, else the bound SIP host, else this host's primary IP."""
    if settings.public_address:
        return settings.public_address
    if settings.sip_host not in ("0.0.0.0", "::", ""):
        return settings.sip_host
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent, the kernel picks a route
        return str(s.getsockname()[0])
    return "127.0.0.1"


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A server TLS context when a certificate and key are configured."""
    if settings.sip_tls_cert is None or settings.sip_tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(settings.sip_tls_cert), str(settings.sip_tls_key))
    return ctx


def defence_policy(settings: Settings) -> DefencePolicy:
    """The per-source rate limit and auth-failure bans (``TELEPATH_SIP_RATE_*``,
    ``_AUTH_FAILURE*``, ``_BAN_SECONDS``, ``_ALLOWLIST``). Also built by ``telepath serve``
    before it starts (``cli/preflight.py``).

    Raises:
        ConfigurationError: an allowlist entry is no IP address or network (Settings' ranges
            for the other values are the policy's).
    """
    return DefencePolicy(
        requests_per_second=settings.sip_rate_limit_per_s,
        burst=settings.sip_rate_burst,
        auth_failures_before_ban=settings.sip_auth_failures_before_ban,
        auth_failure_window_s=settings.sip_auth_failure_window_s,
        ban_seconds=settings.sip_ban_seconds,
        allowlist=frozenset(a.strip() for a in settings.sip_allowlist.split(",") if a.strip()),
    )


def digest_authenticator(settings: Settings, keys: NonceKeys) -> DigestAuthenticator:
    """The digest challenger and checker (``TELEPATH_SIP_DOMAIN``, ``_NONCE_TTL_S``,
    ``_DIGEST_ALGORITHMS``). Also built by ``telepath serve`` before it starts.

    Raises:
        ValueError: TELEPATH_SIP_DIGEST_ALGORITHMS names an algorithm we do not offer, or none.
    """
    algorithms = tuple(
        a.strip().upper() for a in settings.sip_digest_algorithms.split(",") if a.strip()
    )
    return DigestAuthenticator(
        settings.sip_domain,
        keys.own,
        MonotonicClock(),
        nonce_ttl_s=settings.sip_nonce_ttl_s,
        algorithms=cast(tuple[Algorithm, ...], algorithms),
        sibling_secrets=keys.siblings,
    )


@dataclass(frozen=True)
class NonceKeys:
    """This process's digest nonce secret and its sibling SIP workers' (``sip/auth.py``)."""

    own: bytes
    siblings: tuple[bytes, ...] = ()

    @classmethod
    def split(cls, secrets: list[bytes], index: int) -> NonceKeys:
        """Worker ``index``'s view of every worker's secrets."""
        return cls(secrets[index], tuple(s for i, s in enumerate(secrets) if i != index))


@dataclass(frozen=True)
class WorkerRole:
    """A ``telepath sip-worker`` process's part (``cli/workers.py``): no listeners of its own."""

    index: int
    udp: socket.socket  # the front's SIP UDP socket: replies go out on it, nothing is read
    inbox: socket.socket  # datagrams of this worker's calls, forwarded by the front
    udp_bound: tuple[str, int]
    ports: dict[str, int]  # the front's bound SIP ports (Via, Contact)
    #: What goes to the front the other way on ``inbox``, in order and kept (bounded) while
    #: the front is behind: the messages of this worker's calls for the front's TCP/TLS
    #: connections (``SipServer.adopt``) and the digest outcomes it counts (:meth:`report_auth`).
    to_front: OrderedSender = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "to_front", OrderedSender(self.inbox))

    def wake_front(self) -> None:
        """An event is in the outbox: the front's webhook dispatcher should look now. Not
        queued behind :attr:`to_front`: one a full pair refuses is lost, the dispatcher finds
        the event at its next poll (``TELEPATH_WEBHOOK_POLL_S``); a wake-up queued per event
        would take places that stream messages, which nothing sends again, must have."""
        with contextlib.suppress(OSError):
            self.inbox.send(b"w")  # the socket pair's other way (cli/workers.py)

    def report_auth(self, message: bytes) -> None:
        """A digest outcome for the front to count (``FrontCountedGuard``): queued when the
        front is behind, or a burst of failed logins — what its guard is for — would be
        counted short; but only up to the sender's bound for reports, below its bound for
        stream messages, so that a flood of them never crowds out a reply to a carrier."""
        self.to_front.send(message, report=True)


@dataclass
class Gateway:
    """The running SIP + media + call-control stack and its background tasks."""

    server: SipServer
    manager: CallManager
    dispatcher: WebhookDispatcher
    state: ApiState | None = None
    instance_id: str | None = None  # its heartbeat row goes once its calls have ended
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    delivering: asyncio.Task[None] | None = None  # the webhook dispatcher's, one of ``tasks``
    beats: list[asyncio.Task[None]] = field(default_factory=list)  # cancelled at the end
    # call records and webhook events, with the writes they keep through a database outage
    writers: tuple[DbCallRecorder, DbEventSink] | None = None
    journals: Path | None = None  # where the writers copy those writes (db/write_journal.py)
    registrations: Registrations | None = None  # outbound, kept up by the front process
    unlisten: list[Callable[[], object]] = field(default_factory=list)  # called when stopped

    async def replay_journals(self, instance_ids: Collection[str] | None = None) -> None:
        """Write what the dead processes ``instance_ids`` kept through an outage and left in
        their journals (before their calls are closed as lost: ``cli/instances.py``). None:
        every journal but this process's own — only when no other process can be writing one
        (a start that has claimed the instances file, before its workers start)."""
        if self.writers is None or self.journals is None:
            return
        if instance_ids is None:
            instance_ids = journal_owners(self.journals) - {self.instance_id}
        recorder, sink = self.writers
        try:
            for path in journals_of(self.journals, instance_ids, RECORDS_JOURNAL):
                await recorder.replay(path)
            for path in journals_of(self.journals, instance_ids, EVENTS_JOURNAL):
                await sink.replay(path)
        except Exception as exc:  # recovery goes on; the journal stays for the next start
            log.error("replaying a stopped process's journal failed: %s", type(exc).__name__)

    async def stop(self, drain_s: float, alongside: Awaitable[None] | None = None) -> None:
        """Refuse new calls and remove the outbound registrations, let live calls finish for
        ``drain_s``, end the rest, stop.

        ``alongside`` (the SIP workers stopping, the HTTP server finishing its requests) runs
        with the drain, and the listeners stay open until it is done too: the workers' calls
        still get their datagrams through them, and a request still served reaches a gateway
        that still runs (a trunk it deletes ends its calls at once).
        """
        stopping: list[Awaitable[None]] = [self.manager.drain(drain_s)]
        if alongside is not None:
            stopping.append(alongside)
        if self.registrations is not None:
            # Expires: 0 as the drain begins, not after it: registered, this gateway would be
            # sent every new call meanwhile to refuse it (503) — in a multi-instance
            # installation, calls that another instance could take. Behind a NAT the
            # keep-alives go on for the calls still up.
            stopping.append(self.registrations.close(keep_alive=True))
        await asyncio.gather(*stopping)
        await asyncio.sleep(SETTLE_S)
        # the API (done by now: ``alongside``) may delete a trunk during the drain: its calls end
        if self.state is not None and self.manager.trunk_removed in self.state.trunk_removed:
            self.state.trunk_removed.remove(self.manager.trunk_removed)
        for unlisten in self.unlisten:
            unlisten()
        if self.registrations is not None:  # the keep-alives end, while the socket is open
            await self.registrations.close()
        await self.server.stop()
        self.stop_event.set()
        for task in self.tasks:
            limit = TASK_STOP_S
            if task is self.delivering:
                # deliveries in flight may finish (and their outcomes be stored): one cut off
                # stays leased, and a restart sends it again though the receiver may have it
                limit += self.dispatcher.stop_grace_s
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, limit)
        for task in self.beats:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        lost = 0
        if self.writers is not None:  # a last attempt for writes kept through an outage
            lost = sum(await asyncio.gather(*(w.close(WRITERS_CLOSE_S) for w in self.writers)))
        if lost and self.journals is not None and self.instance_id is not None:
            # the heartbeat stays, so the records are closed even if this directory is not reused
            log.error(
                "shutdown: %d call record or webhook event write(s) not taken by the database; "
                "kept in %s for the next start",
                lost,
                self.journals,
            )
        elif lost:  # the heartbeat stays: another instance's sweep closes this one's open records
            log.error("shutdown: %d call record or webhook event write(s) lost", lost)
        elif self.state is not None and self.instance_id is not None:
            try:  # every call of this process has ended: nothing for another to close
                await instance_store.forget(self.state.sessions, [self.instance_id])
            except Exception as exc:
                log.warning("removing the gateway heartbeat failed: %s", type(exc).__name__)
        await self.dispatcher.aclose()
        if self.manager.http is not None:
            await self.manager.http.aclose()
        media_pacer.observe_lateness(None)  # the media clocks stopped with the calls


def worker_stop_s(bye_wait_s: float) -> float:
    """The longest a SIP worker's :meth:`Gateway.stop` runs past its drain time: its calls'
    close, and the cancel of those that overran it (``drain_overrun_s``); then its one
    background task (``watch_trunks``) and its writers' last attempt."""
    return drain_overrun_s(bye_wait_s) + SETTLE_S + TASK_STOP_S + WRITERS_CLOSE_S


def journal_dir(settings: Settings) -> Path:
    """Where gateway processes copy the writes they keep through a database outage."""
    return Path(settings.data_dir) / "journal"


async def start_gateway(
    settings: Settings,
    state: ApiState,
    role: WorkerRole | None = None,
    nonce_keys: NonceKeys | None = None,
    instance_id: str | None = None,
) -> Gateway:
    """Bind SIP listeners and start call control, webhooks and retention.

    ``instance_id`` (``cli/instances.py``) is stored with every call record this process writes,
    and beaten in ``gateway_instances`` from before the first call until the last has ended;
    the front (no ``role``) also closes the calls of processes whose heartbeat stopped.

    With ``role`` (a SIP worker process): no listeners, webhook dispatcher or retention — the
    front process has them — only call control on the datagrams the front forwards.
    """
    loop = asyncio.get_running_loop()
    address = advertised_address(settings)
    tls = tls_context(settings)
    client_context()  # built now (~33 ms), not on the event loop at the first wss:// agent call
    listen = [
        ListenAddress("UDP", settings.sip_host, settings.sip_port),
        ListenAddress("TCP", settings.sip_host, settings.sip_port),
    ]
    if tls is not None:
        listen.append(ListenAddress("TLS", settings.sip_host, settings.sip_tls_port))
    ports = {"UDP": settings.sip_port, "TCP": settings.sip_port, "TLS": settings.sip_tls_port}
    if role is not None:
        ports = dict(role.ports)
    core = UserAgentCore(
        UaConfig(
            # Contact, Via: an IPv6 address in brackets (RFC 3261 §25.1 IPv6reference)
            contact_host=f"[{address}]" if ":" in address else address,
            contact_ports=ports,
            session_expires=settings.sip_session_expires,
        ),
        LoopClock(loop),
        on_request=lambda method: state.metrics.sip_request_by(method).inc(),
        on_response=lambda status: state.metrics.sip_response_by(str(status)).inc(),
    )
    policy = defence_policy(settings)
    guard = (
        SourceGuard(policy, MonotonicClock())
        if role is None  # a worker's failures are counted by the front, with every other's
        else FrontCountedGuard(policy, MonotonicClock(), report=role.report_auth)
    )
    authenticator = digest_authenticator(settings, nonce_keys or NonceKeys(os.urandom(32)))
    dispatcher = WebhookDispatcher.from_settings(
        state.sessions, state.keyring, settings, metrics=state.metrics
    )
    journals = journal_dir(settings)
    sink = DbEventSink(
        state.sessions,
        metrics=state.metrics,
        on_enqueued=dispatcher.wake if role is None else role.wake_front,
        journal=journal_path(journals, instance_id, EVENTS_JOURNAL) if instance_id else None,
    )
    recorder = DbCallRecorder(
        state.sessions,
        state.metrics,
        instance_id=instance_id,
        journal=journal_path(journals, instance_id, RECORDS_JOURNAL) if instance_id else None,
        outbox=sink,  # a call's end and its events: one transaction
    )
    manager = CallManager(
        CallControlConfig.from_settings(settings, address),
        DbTrunkDirectory(state.sessions, state.keyring),
        RtpPortAllocator.from_settings(settings, settings.sip_host),
        authenticator,
        guard=guard,
        recorder=recorder,
        events=sink,
        metrics=state.metrics,
        http=SharedHttpClient(),
    )
    locator = SipLocator(settings.dns_server_list)
    manager.locator = locator
    stun_server = settings.stun_server_address
    if stun_server is not None:
        manager.stun = StunClient(*stun_server)
    server = SipServer(
        core,
        manager.on_sip_event,
        guard=guard,
        backlog=BacklogMonitor(threshold_s=settings.sip_overload_wait_ms / 1000),
        on_receive_wait=state.metrics.sip_receive_wait.observe,
        limits=StreamLimits(
            max_connections=settings.sip_tcp_max_connections,
            max_per_source=settings.sip_tcp_max_connections_per_source,
            idle_s=settings.sip_tcp_idle_s,
            # a handshake never finished is a silent connection too
            tls_handshake_s=min(10.0, settings.sip_tcp_idle_s or 10.0),
        ),
    )
    server.client_tls = client_context  # a dialog's connection gone: a new one over TLS
    if instance_id is not None:  # the row is there before the first call
        try:
            await instance_store.beat(state.sessions, instance_id)
        except Exception as exc:  # the database is needed for calls anyway; say so, go on
            log.warning("gateway heartbeat failed: %s; retrying", type(exc).__name__)
    if role is None:
        await server.start(listen, tls)
        # Bound ports may differ from the configured ones when 0 was asked for (tests).
        for name, (_, port) in server.bound.items():
            core.config.contact_ports[name] = port
    else:
        server.adopt(role.udp, role.inbox, role.udp_bound, role.to_front)
    manager.attach(server)
    gateway = Gateway(
        server,
        manager,
        dispatcher,
        state,
        instance_id,
        writers=(recorder, sink),
        journals=journals,
    )
    if instance_id is not None:
        interval = instances.heartbeat_s(settings.lost_instance_after_s)
        gateway.beats.append(
            loop.create_task(instances.beat_forever(state.sessions, instance_id, interval))
        )
        if role is None:
            gateway.beats.append(
                loop.create_task(
                    instances.reap_forever(
                        state.sessions,
                        manager.sink,
                        state.metrics,
                        instance_id,
                        settings.lost_instance_after_s,
                    )
                )
            )
    state.trunk_removed.append(manager.trunk_removed)
    media_pacer.observe_lateness(state.metrics.media_tick_lateness.observe)
    gateway.tasks.append(loop.create_task(manager.watch_trunks(gateway.stop_event)))
    if role is not None:
        log.info("SIP worker %d serving its calls", role.index)
        return gateway
    gateway.delivering = loop.create_task(dispatcher.run(gateway.stop_event))
    gateway.tasks.append(gateway.delivering)
    registrations = Registrations(
        DbRegistrationStore(state.sessions, state.keyring),
        core,
        server.dispatch,
        keepalive_s=settings.sip_keepalive_s,
        connect=lambda transport, addr, host: server.connect(
            transport, addr, client_context() if transport == "TLS" else None, host
        ),
        is_open=server.is_open,
        disconnect=server.let_go,  # with SIP workers, kept if a worker's call claims it
        workers=settings.sip_workers,
        locator=locator,
        in_use=core.uses_connection,
    )
    manager.registrations = gateway.registrations = registrations
    gateway.unlisten.append(on_trunks_changed(registrations.trunks_changed))
    gateway.tasks.append(loop.create_task(registrations.run(gateway.stop_event)))
    gateway.tasks.append(
        loop.create_task(
            retention_loop(
                state.maintenance_sessions or state.sessions, settings, gateway.stop_event
            )
        )
    )
    bound = ", ".join(f"{k} {h}:{p}" for k, (h, p) in server.bound.items())
    log.info("SIP listening on %s (advertised address %s)", bound, address)
    return gateway
