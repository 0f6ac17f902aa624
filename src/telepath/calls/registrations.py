"""Keeps the trunks' outbound registrations up (RFC 3261 §10.2): the asyncio side of
``sip/registration.py``.

Every ``poll_s`` it reads the registrations of active trunks (``RegistrationStore``) and starts,
replaces or removes bindings to match; each binding sends its REGISTERs through the gateway's
SIP socket — so the NAT binding they open is the one the carrier's INVITEs come back through —
refreshes before expiry, retries failures with back-off, and reports its state to the store
(``GET /v1/trunks`` shows it). On shutdown, and when a trunk or its registration goes, the
binding is removed with ``Expires: 0`` (bounded wait). A registration changed is removed so too,
and its new binding — a new Call-ID, often the same Contact — sent only once that removal is
answered or has timed out (RFC 3261 §10.2): a registrar taking the ``Expires: 0`` last would
remove the new binding (§10.3 step 7: another Call-ID's zero expiry removes the contact).

Decisions: the registrar URI is located as RFC 3263 says (``transport/dns.py``: NAPTR, then SRV,
then A/AAAA — literal addresses and explicit ports skip the first two), when a binding starts,
again whenever every server found has failed, and at a refresh once ``RELOCATE_S`` old; a
registered binding stays with its server until it fails or DNS no longer lists it (a timeout, a
failed connection or a 503 moves it to the next one at once, §4.3; any other failure is retried
with back-off at the same one; a TCP/TLS connection may take ``CONNECT_TIMEOUT_S``). NAPTR may
choose the transport of a URI that names none (the Contact and Via follow it); until the binding is
first registered, failover goes on down the whole list, across transports (a TLS server whose
certificate does not verify gives way to the UDP one after it); once registered, failover stays on
its transport. The REGISTER's Request-URI stays the registrar URI, and a TLS registrar's
certificate is checked against its domain, not the SRV target (RFC 5922 §4.1). UDP by default; a
registrar URI with ``;transport=tcp`` gets a TCP connection of its own, ``;transport=tls`` or
``sips:`` a TLS one (the registrar's certificate verified against its host, as for ``wss://``
agents), opened by the gateway and kept (RFC 5923: the registrar sends the calls back on it, which
is what makes a connection work behind a NAT), with a keep-alive on it always (RFC 5626 §4.4.1 — it
also finds a dead connection), and a new connection and REGISTER as soon as one is found closed.
With SIP worker processes only the front process (worker 0) registers, choosing Call-IDs it owns
(``sip/routing.py``), so the registrar's answers come back to it; every instance of a
multi-instance installation registers its own contact (several bindings for one address-of-record;
the registrar forks or picks one, and a dead instance's binding lapses at its expiry).

Behind a NAT (the registrar saw the REGISTER come from another address than our contact's,
``sip/registration.py``) the contact moves to the address it saw, and a keep-alive — a
double CRLF datagram, as SIP phones send (RFC 5626 §3.5.1 defines it for streams; registrars
and proxies ignore it on UDP) — goes to the registrar every ``keepalive_s``, so the NAT keeps
the mapping the carrier's INVITEs come back through between refreshes (UDP mappings often
last 30-120 s). Without a NAT none is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from telepath.calls.ports import DirectoryUnavailable, RegistrationConfig, RegistrationStore
from telepath.sip.errors import SipParseError
from telepath.sip.locate import Target
from telepath.sip.registration import (
    Failed,
    Outcome,
    Registered,
    Registration,
    Resend,
    Unregistered,
    backoff_delay,
)
from telepath.sip.routing import owner_of
from telepath.sip.transaction import Source
from telepath.sip.ua import Output, RequestAnswered, UserAgentCore
from telepath.sip.ua_events import Send
from telepath.sip.uri import SipUri, parse_uri
from telepath.transport.dns import SipLocator

log = logging.getLogger(__name__)

__all__ = ["KEEPALIVE", "Registrations"]

KEEPALIVE = b"\r\n\r\n"
# The longest a TCP connection and TLS handshake to a registrar's server may take before the
# next server is tried (Kamailio's tcp_connect_timeout defaults to 10 s as well).
CONNECT_TIMEOUT_S = 10.0
# A registered binding's servers are looked up again at a refresh once this old: as often as
# call control looks up the addresses whose calls are the registration's (calls/manager.py).
RELOCATE_S = 60.0


@dataclass(eq=False)  # one binding is itself only (kept in sets)
class _Binding:
    config: RegistrationConfig
    machine: Registration
    next_hop: SipUri  # where its requests go: the outbound proxy if it has one, else the registrar
    dest: Source | None = None
    timer: asyncio.TimerHandle | None = None
    keepalive: asyncio.TimerHandle | None = None
    status: tuple[str, str | None] | None = None  # last reported (status, detail)
    leaving: asyncio.Future[None] | None = None  # set once it is being removed
    replaced: bool = False  # removed for a changed registration of its trunk
    resolve_failures: int = 0
    resolving: set[asyncio.Task[None]] = field(default_factory=set)
    # RFC 3263: where the registrar's domain said to go, best first, and the one in use; a
    # timeout, a 503 or a failed connection moves on, the end of the list resolves again
    targets: list[Target] = field(default_factory=list)
    target_at: int = 0
    settled: bool = False  # registered once: its transport is fixed
    located_at: float = 0.0  # loop time of the last lookup of ``targets``


class Registrations:
    """The gateway's outbound registrations.

    Args:
        store: where the registrations come from and their state goes.
        core: the gateway's SIP core (its contact host and UDP port name our contact).
        send: hands the core's outputs to the transport (``SipServer.dispatch``).
        poll_s: how often the store is read for changes.
        keepalive_s: the keep-alive interval behind a NAT, and on TCP (0: none).
        connect: opens a stream connection (transport, address, the host whose certificate a
            TLS one must show): TCP and TLS registrations need it.
        is_open: whether a stream connection is still up (``SipServer.is_open``).
        disconnect: closes a stream connection a binding no longer needs.
        workers: SIP worker processes sharing the port (Call-IDs are chosen for worker 0).
        locator: finds the registrar's servers (RFC 3263; the system's DNS by default).
        in_use: whether a call's dialog signals over a stream connection
            (``UserAgentCore.uses_connection``): such a connection is left open when the
            binding leaves it.
    """

    def __init__(
        self,
        store: RegistrationStore,
        core: UserAgentCore,
        send: Callable[[list[Output]], None],
        *,
        poll_s: float = 10.0,
        keepalive_s: float = 20.0,
        connect: Callable[[str, tuple[str, int], str], Awaitable[int]] | None = None,
        is_open: Callable[[int], bool] | None = None,
        disconnect: Callable[[int], None] | None = None,
        workers: int = 1,
        locator: SipLocator | None = None,
        in_use: Callable[[int], bool] | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        relocate_s: float = RELOCATE_S,
    ) -> None:
        self.store = store
        self.connect_timeout_s = connect_timeout_s
        self.relocate_s = relocate_s
        self.locator = locator or SipLocator()
        self.core = core
        self._send = send
        self.poll_s = poll_s
        self.keepalive_s = keepalive_s
        self._connect = connect
        self._is_open = is_open or (lambda conn: False)
        self._disconnect = disconnect or (lambda conn: None)
        self.in_use = in_use or (lambda conn: False)
        self.workers = workers
        self._bindings: dict[str, _Binding] = {}  # trunk id -> binding
        self._by_call_id: dict[str, _Binding] = {}
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._writes: set[asyncio.Task[None]] = set()  # state being stored
        self._closed = False
        self._lingering: set[int] = set()  # connections let go while a call still used them
        self._kept_open: set[_Binding] = set()  # removed, NAT kept open: close(keep_alive=True)

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the store until ``stop`` is set, then remove every binding."""
        try:
            while not stop.is_set():
                self._changed.clear()
                try:
                    await self.sync()
                except Exception:  # the loop goes on: the next poll tries again
                    log.exception("outbound registrations: reading the store failed")
                waits = {
                    self._loop.create_task(stop.wait()),
                    self._loop.create_task(self._changed.wait()),
                }
                await asyncio.wait(waits, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED)
                for wait in waits:
                    wait.cancel()
        finally:
            await self.close()

    def trunks_changed(self) -> None:
        """Read the store again now (a trunk was changed through this process's API)."""
        self._changed.set()

    async def sync(self) -> None:
        """Match the bindings to the store's registrations."""
        self._close_lingering()
        if self._closed:
            return
        try:
            wanted = {c.trunk_id: c for c in await self.store.registrations()}
        except DirectoryUnavailable:
            return  # keep what is up; the next poll tries again
        if self._closed:
            return
        for trunk_id, binding in list(self._bindings.items()):
            config = wanted.get(trunk_id)
            if config != binding.config:
                binding.replaced = config is not None
                self._remove(binding)
        # §10.2: a new registration waits for the final response (or the timeout) of the one
        # removing the old binding; its answer reads the store again (``_forget``)
        leaving = set()
        for binding in self._by_call_id.values():
            if binding.leaving is not None:
                leaving.add(binding.config.trunk_id)
                binding.replaced = binding.replaced and binding.config.trunk_id in wanted
        for trunk_id, config in wanted.items():
            if trunk_id not in self._bindings and trunk_id not in leaving:
                try:
                    self._start(config)
                except Exception:  # one bad row must not keep the others from registering
                    log.exception("trunk %s: its registration cannot be started", trunk_id)

    async def close(self, timeout_s: float = 2.0, *, keep_alive: bool = False) -> None:
        """Remove every binding (``Expires: 0``), waiting up to ``timeout_s`` for the answers
        and for the state to be stored. Nothing is registered after this.

        ``keep_alive`` (as a drain begins: the registrar sends no new calls, those up go on):
        a binding behind a NAT over UDP goes on sending its keep-alives until the next close,
        since the carrier's requests in those calls' dialogs (a BYE) come back through the
        NAT's mapping that they hold open. Connections that calls use stay open anyway."""
        self._closed = True
        removed = list(self._bindings.values())
        leaving = [f for f in (self._remove(b) for b in removed) if f]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                if leaving:
                    await asyncio.gather(*leaving)
                if self._writes:
                    await asyncio.gather(*self._writes, return_exceptions=True)
        for binding in list(self._by_call_id.values()):
            self._forget(binding)
        for binding in self._kept_open:
            if binding.keepalive is not None:
                binding.keepalive.cancel()
                binding.keepalive = None
        self._kept_open = set()
        if keep_alive and self.keepalive_s > 0:
            for binding in removed:
                dest = binding.dest
                if binding.machine.behind_nat and dest is not None and dest.transport == "UDP":
                    self._kept_open.add(binding)
                    binding.keepalive = self._loop.call_later(self.keepalive_s, self._ping, binding)

    @property
    def count(self) -> int:
        """Bindings being kept up."""
        return len(self._bindings)

    def contact_of(self, trunk_id: str) -> str | None:
        """The contact registered for ``trunk_id``'s trunk (None if none is kept up)."""
        binding = self._bindings.get(trunk_id)
        return None if binding is None else binding.machine.contact

    # ------------------------------------------------------------------ one binding

    def _start(self, config: RegistrationConfig) -> None:
        registrar = parse_uri(config.registrar)
        hop = registrar if config.outbound_proxy is None else parse_uri(config.outbound_proxy)
        machine = self._machine(config, registrar, _transport(hop), self._call_id())
        binding = _Binding(config, machine, hop)
        self._bindings[config.trunk_id] = binding
        self._by_call_id[machine.call_id] = binding
        self._attempt(binding)

    def _machine(
        self, config: RegistrationConfig, registrar: SipUri, transport: str, call_id: str
    ) -> Registration:
        """The binding's REGISTER state machine, its Contact and Via on ``transport``."""
        host = self.core.config.contact_host
        port = self.core.config.contact_ports.get(transport, 5060)
        domain = config.domain or registrar.host
        param = "" if transport == "UDP" else f";transport={transport.lower()}"
        return Registration(
            registrar=registrar,
            aor=f"sip:{config.username}@{domain}",
            contact=f"sip:{config.contact_user}@{host}:{port}{param}",
            via=f"SIP/2.0/{transport} {host}:{port}",
            auth_username=config.auth_username or config.username,
            password=config.password,
            expires=config.expires,
            call_id=call_id,
            route=config.outbound_proxy,
        )

    def _call_id(self) -> str:
        """A Call-ID that worker 0 (this process) owns, so the answers come back here."""
        while True:
            call_id = f"{secrets.token_hex(12)}@telepath"
            if self.workers <= 1 or owner_of(call_id.encode(), self.workers) == 0:
                return call_id

    def _refresh(self, binding: _Binding) -> None:
        """Refresh a registered binding (its servers looked up again first if due)."""
        self._attempt(binding, refresh=True)

    def _attempt(self, binding: _Binding, *, refresh: bool = False) -> None:
        """Resolve the registrar, then send a REGISTER (a first one, a retry, a failover or, with
        ``refresh``, the refresh of a registered binding).

        One attempt at a time: another started meanwhile (the keep-alive finding the connection
        closed while a refresh still connects) would send its own REGISTER, and each answer
        schedules a refresh — the binding would register twice as often from then on. An
        attempt's own failover (from inside it) goes on.
        """
        current = asyncio.current_task()
        if any(t is not current and not t.done() for t in binding.resolving):
            return
        if binding.timer is not None:
            binding.timer.cancel()
        binding.timer = None
        task = self._loop.create_task(self._resolve_and_register(binding, refresh))
        binding.resolving.add(task)
        task.add_done_callback(binding.resolving.discard)

    def _kept(self, binding: _Binding) -> bool:
        """True while ``binding`` is the one kept up for its trunk."""
        return self._bindings.get(binding.config.trunk_id) is binding

    async def _resolve_and_register(self, binding: _Binding, refresh: bool = False) -> None:
        registrar = binding.machine.registrar
        hop = binding.next_hop
        if binding.targets and binding.settled and refresh:
            if self._loop.time() - binding.located_at >= self.relocate_s:
                await self._relocate(binding)
                if not self._kept(binding):
                    return
        elif not binding.targets:
            binding.located_at = self._loop.time()
            try:
                located = await self.locator.locate(hop)
            except ValueError:
                located = []
            if not self._kept(binding):
                return
            if binding.settled:
                # Registered once: failover stays on the binding's transport (its Contact
                # and Via name it; the registrar routes our calls by them).
                transport = _transport_of(binding.machine)
                located = [t for t in located if t.transport == transport]
            # Before that, the whole list in its order: NAPTR may have chosen the transport
            # (RFC 3263 §4.1) for a registrar URI that named none, and one that fails (a
            # certificate that does not verify, a port firewalled) gives way to the next.
            binding.targets = located
            binding.target_at = 0
            if not binding.targets:
                binding.resolve_failures += 1
                self._report(binding, "failed", f"cannot resolve {hop.host}", None)
                delay = backoff_delay(binding.resolve_failures)
                binding.timer = self._loop.call_later(delay, self._attempt, binding)
                return
        target = binding.targets[binding.target_at]
        transport, addr = target.transport, (target.host, target.port)
        if transport != _transport_of(binding.machine):
            # never registered (else the list holds its transport only): the Contact and Via
            # follow the transport, under a new Call-ID (its CSeq starts again, §10.2.4); the
            # failures go on counting, so that the back-off over the list grows (RFC 5626 §4.5)
            failures = binding.machine.failures
            self._by_call_id.pop(binding.machine.call_id, None)
            binding.machine = self._machine(binding.config, registrar, transport, self._call_id())
            binding.machine.failures = failures
            self._by_call_id[binding.machine.call_id] = binding
        dest = Source("UDP", addr)
        if transport != "UDP":
            reuse = binding.dest
            if (
                reuse is not None
                and reuse.conn is not None
                and reuse.addr == addr
                and self._is_open(reuse.conn)
            ):
                dest = reuse
            else:
                try:
                    if self._connect is None:
                        raise OSError("no stream connections here")
                    # Bounded: a server behind a firewall that drops the SYN would hold the
                    # failover for the system's connect timeout (about two minutes on Linux).
                    async with asyncio.timeout(self.connect_timeout_s):
                        conn = await self._connect(transport, addr, hop.host.strip("[]"))
                    dest = Source(transport, addr, conn)
                except OSError as exc:  # TimeoutError (the bound above) is one
                    if self._kept(binding) and not self._fail_over(binding, "no connection"):
                        binding.resolve_failures += 1
                        why = f"cannot connect to {hop.host} ({type(exc).__name__})"
                        self._report(binding, "failed", why, None)
                        delay = backoff_delay(binding.resolve_failures)
                        binding.timer = self._loop.call_later(delay, self._attempt, binding)
                    return
                if not self._kept(binding):
                    return
        binding.resolve_failures = 0
        if binding.dest is not None and binding.dest is not dest and binding.dest.conn is not None:
            self._release(binding.dest.conn)  # the previous server's connection
        binding.dest = dest
        self._send(self.core.send_request(binding.machine.register(), binding.dest))

    async def _relocate(self, binding: _Binding) -> None:
        """Look a registered binding's servers up again at a refresh (RFC 3263 §4: DNS answers
        are held for their TTL, not forever). Its server still listed: it stays there (sticky),
        the new list after it for failover; gone — a carrier draining it, whose calls call
        control would soon challenge, since it follows DNS too — the binding moves to the first
        of the new list. Nothing found, or only the domain's own address (a NAPTR/SRV answer
        lost looks like none): the list as it was."""
        binding.located_at = self._loop.time()
        try:
            located = await self.locator.locate(binding.next_hop)
        except ValueError:
            return
        transport = _transport_of(binding.machine)
        located = [t for t in located if t.transport == transport]
        if not located or not binding.targets:
            return
        current = binding.targets[binding.target_at]
        if current in located:
            # in use first, then the rest in their new order: failover from it reaches them all
            # (servers of one priority come back shuffled, RFC 2782)
            binding.targets = [current, *(t for t in located if t != current)]
        elif any(t.fallback for t in located):
            return  # no NAPTR/SRV answer this time: maybe a lost one; the list stands
        else:
            log.info(
                "trunk %s: the registrar's server %s:%d is no longer in DNS; moving to %s:%d",
                binding.config.trunk_id,
                current.host,
                current.port,
                located[0].host,
                located[0].port,
            )
            binding.targets = located
        binding.target_at = 0

    def _fail_over(self, binding: _Binding, why: str) -> bool:
        """Move to the binding's next server and register there now (RFC 3263 §4.3); False
        when none is left (the list is resolved again at the next attempt)."""
        if binding.target_at + 1 >= len(binding.targets):
            binding.targets = []
            return False
        failed = binding.targets[binding.target_at]
        binding.target_at += 1
        log.info(
            "trunk %s: the registrar's server %s:%d failed (%s); trying the next",
            binding.config.trunk_id,
            failed.host,
            failed.port,
            why,
        )
        self._attempt(binding)
        return True

    def _remove(self, binding: _Binding) -> asyncio.Future[None] | None:
        """Stop keeping ``binding`` up; unregister it if it may be registered."""
        self._bindings.pop(binding.config.trunk_id, None)
        if binding.timer is not None:
            binding.timer.cancel()
            binding.timer = None
        if binding.keepalive is not None:
            binding.keepalive.cancel()
            binding.keepalive = None
        for task in binding.resolving:
            task.cancel()
        if binding.dest is None:  # never sent anything
            self._forget(binding)
            return None
        binding.leaving = self._loop.create_future()
        self._send(self.core.send_request(binding.machine.unregister(), binding.dest))
        return binding.leaving

    def _forget(self, binding: _Binding) -> None:
        self._by_call_id.pop(binding.machine.call_id, None)
        if binding.dest is not None and binding.dest.conn is not None:
            self._release(binding.dest.conn)  # the connection was the binding's own
        if binding.leaving is not None and not binding.leaving.done():
            binding.leaving.set_result(None)
            self._changed.set()  # its trunk's new binding, if any, may start now (``sync``)

    def _release(self, conn: int) -> None:
        """Close a connection the binding no longer uses — unless a call signals over it (the
        registrar sent the call on it): closing it would cut that call off; it is closed once
        no call uses it (``_close_lingering``), if its peer has not closed it before."""
        if self.in_use(conn):
            log.info("a registration left a connection that a call still uses; kept open")
            self._lingering.add(conn)
            return
        self._disconnect(conn)

    def _close_lingering(self) -> None:
        """Close the connections ``_release`` left open for a call, once no call uses them (at
        each poll) — unless a binding has taken one up again (it is the binding's then)."""
        held = {b.dest.conn for b in self._by_call_id.values() if b.dest is not None}
        for conn in list(self._lingering):
            if conn in held or not self._is_open(conn):
                self._lingering.discard(conn)
            elif not self.in_use(conn):
                self._lingering.discard(conn)
                self._disconnect(conn)

    # ------------------------------------------------------------------ answers

    def answered(self, event: RequestAnswered) -> None:
        """The final answer (or the timeout) of one of our REGISTERs."""
        try:
            call_id = event.request.call_id
        except SipParseError:
            return
        binding = self._by_call_id.get(call_id)
        if binding is None or not binding.machine.is_current(event.request):
            return  # an answer to a request since replaced (or of a binding gone)
        machine = binding.machine
        contact = machine.contact
        dest = binding.dest
        if event.response is None and dest is not None and dest.conn is not None:
            # No answer on a connection: a NAT or firewall may have forgotten it without a
            # reset, so it looks open forever. Closed, the next attempt opens another — unless
            # a call signals over it (then it is alive, and it is the registrar that is silent).
            self._release(dest.conn)
        outcome: Outcome = (
            machine.on_timeout() if event.response is None else machine.on_response(event.response)
        )
        if (
            isinstance(outcome, Failed)
            and (event.response is None or event.response.status == 503)
            and binding.leaving is None
            and self._fail_over(binding, "503" if event.response else "no answer")
        ):
            return  # a server that does not answer, or is overloaded: the next one
        if machine.contact != contact:
            log.info(
                "trunk %s: the registrar sees this gateway at %s (NAT); registering that contact",
                binding.config.trunk_id,
                machine.contact.partition("@")[2],
            )
        self._apply(binding, outcome)

    def _apply(self, binding: _Binding, outcome: Outcome) -> None:
        if isinstance(outcome, Resend):
            assert binding.dest is not None
            self._send(self.core.send_request(outcome.request, binding.dest))
        elif isinstance(outcome, Unregistered):
            self._forget(binding)
            if not binding.replaced:  # a new one follows (and reports) when replaced
                self._report(binding, "unregistered", None, None)
        elif binding.leaving is not None:
            return  # a late answer to a register sent before the removal
        elif isinstance(outcome, Registered):
            if not binding.settled:
                _settle(binding)
            until = datetime.now(UTC) + timedelta(seconds=outcome.expires)
            self._report(binding, "registered", None, until, always=True)
            binding.timer = self._loop.call_later(outcome.refresh_in, self._refresh, binding)
            wanted = binding.machine.behind_nat or (
                binding.dest is not None and binding.dest.reliable
            )
            if wanted and self.keepalive_s > 0 and binding.keepalive is None:
                binding.keepalive = self._loop.call_later(self.keepalive_s, self._ping, binding)
        elif isinstance(outcome, Failed):
            if binding.status != ("failed", outcome.detail):
                log.warning(
                    "trunk %s: registration failed (%s); retrying in %.0f s",
                    binding.config.trunk_id,
                    outcome.safe_detail,  # the registrar's own words may hold a number
                    outcome.retry_in,
                )
            self._report(binding, "failed", outcome.detail, None)
            binding.timer = self._loop.call_later(outcome.retry_in, self._attempt, binding)

    def _ping(self, binding: _Binding) -> None:
        """A keep-alive to the registrar, then the next one (until the binding is removed). A
        TCP connection found closed is replaced at once, with a REGISTER on the new one."""
        binding.keepalive = None
        dest = binding.dest
        if binding in self._kept_open and dest is not None:  # removed: the NAT's mapping only
            self._send([Send(KEEPALIVE, dest)])
            binding.keepalive = self._loop.call_later(self.keepalive_s, self._ping, binding)
            return
        if not self._kept(binding) or dest is None:
            return
        if dest.conn is not None and not self._is_open(dest.conn):
            log.info(
                "trunk %s: the registrar's connection closed; registering again",
                binding.config.trunk_id,
            )
            if binding.timer is not None:
                binding.timer.cancel()
            self._attempt(binding)  # its Registered schedules the keep-alives again
            return
        self._send([Send(KEEPALIVE, dest)])
        binding.keepalive = self._loop.call_later(self.keepalive_s, self._ping, binding)

    def _report(
        self,
        binding: _Binding,
        status: str,
        detail: str | None,
        until: datetime | None,
        *,
        always: bool = False,
    ) -> None:
        """Store the state when it changed (``always``: each refresh moves ``until`` on)."""
        if binding.status == (status, detail) and not always:
            return
        if binding.status != (status, detail) and status == "registered":
            log.info("trunk %s: registered", binding.config.trunk_id)
        binding.status = (status, detail)
        # the binding shown, or the one removed or refused (not shown over another's)
        uri = parse_uri(binding.machine.contact)
        address = f"{uri.host}:{uri.port or 5060}"
        task = self._loop.create_task(
            self._store(binding.config.trunk_id, status, detail, until, address)
        )
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _store(
        self,
        trunk_id: str,
        status: str,
        detail: str | None,
        until: datetime | None,
        address: str | None,
    ) -> None:
        try:
            await self.store.set_registration_status(trunk_id, status, detail, until, address)
        except Exception as exc:  # the next change reports again; the binding goes on
            log.warning(
                "trunk %s: registration state not stored (%s)", trunk_id, type(exc).__name__
            )


def _settle(binding: _Binding) -> None:
    """Registered for the first time: the binding's transport is fixed, and so its failover
    list keeps that transport's servers only (the one in use where it was in the order)."""
    binding.settled = True
    transport = _transport_of(binding.machine)
    current = binding.targets[binding.target_at] if binding.targets else None
    binding.targets = [t for t in binding.targets if t.transport == transport]
    binding.target_at = binding.targets.index(current) if current in binding.targets else 0


def _transport_of(machine: Registration) -> str:
    """The transport a machine's Via names (``SIP/2.0/UDP host:port``)."""
    return machine.via.split(None, 1)[0].rsplit("/", 1)[1]


def _transport(registrar: SipUri) -> str:
    """ "UDP", "TCP" or "TLS": the registrar URI's ``transport``, TLS for ``sips:`` (§19.1.2)."""
    if registrar.scheme == "sips":
        return "TLS"
    transport = (registrar.param("transport") or "udp").upper()
    if transport not in ("UDP", "TCP", "TLS"):
        raise ValueError(f"no registration over {transport}")
    return transport
