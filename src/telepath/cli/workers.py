"""SIP worker processes: ``TELEPATH_SIP_WORKERS`` > 1 runs calls in several processes.

One Python process sets up about 300-400 calls per second on the benchmark's VMs (its event
loop thread saturates), whatever the number of cores. With ``N`` workers, ``telepath serve``
(worker 0, the *front*) binds the SIP port as before and starts ``N - 1`` more processes
(``telepath sip-worker``); the front reads every UDP datagram and hands the ones whose call
another worker owns to that worker (:mod:`telepath.transport.sip_fanout`). Each worker runs its
own calls end to end — SIP dialogs, media, agent connections, call records and webhook events
in the database — so nothing about a call crosses processes after its datagrams.

What stays in the front: the HTTP API (``/metrics`` merges every worker's metrics, its counters
never falling: a worker late to answer is shown by its last answer, and one started again adds
its earlier processes' last counts to its own — :meth:`WorkerPool.metrics`), the webhook
dispatcher (the outbox is in the database; a worker that adds an event writes one byte the other
way on its inbox pair, which wakes the dispatcher as the front's own events do), retention, and
the TCP and TLS connections: their messages are handed to the worker that owns each call like
datagrams, and what a worker sends on a connection comes back on its pair for the front to write.
Limits that are per process — ``TELEPATH_SIP_MAX_CALLS``, ``TELEPATH_SIP_MAX_CPS``, the per-source
rate limit and burst, the RTP port range — are split evenly between the workers; the Call-ID
hash spreads calls evenly. Digest nonces are per worker (a call's challenge and its answer share
the Call-ID, hence the worker); each knows its siblings' nonce secrets, so a nonce reused on a
call another worker owns is answered ``stale=true`` there, not counted as a failed login.

A worker that exits unexpectedly is started again after a second (its live calls are lost:
their datagrams reach the new process, which answers ``481``); starts that fail in a row wait
2, 4 … up to 30 s (:func:`respawn_delay`), and are tried for as long as the front runs. Each
start of a worker has its own instance id, stored with its call records: when a worker exits,
the front closes the records it left open as ``lost`` at once and sends their ``call.ended``
(``cli/instances.py``). On shutdown the front sends every worker SIGTERM, and each drains its
calls as ``telepath serve`` does; one still running :func:`stop_grace_s` after the drain time
(its calls' BYE wait counted) is killed.

Control channel (a stream socket pair per worker): the front sends one JSON line (the worker's
settings, the SIP ports), the worker answers ``ready`` once it serves (the front starts its HTTP
API only then); then the front sends lines ``metrics <n>`` (answered with ``n`` and the length
as two 4-byte integers, then the Prometheus text; an answer to an earlier ``n`` that timed out is
skipped), ``trunk_removed <id>`` and ``ban <ip> <seconds>``. End of file, or a failed write,
tells the worker the front is gone: it drains its calls and exits.

Authentication-failure bans are global: a worker reports each digest outcome to the front on
its inbox pair (:class:`FrontCountedGuard`), the front's guard counts them with its own, as one
process would, and sends every ban it decides to every worker (a new one gets those in force
in its settings line). The front's guard then also refuses the banned source's TCP/TLS
connections at accept.

Hand-written over ``asyncio`` subprocesses: ``multiprocessing`` would fork an event loop or pickle
sockets; here the socket file descriptors are passed with ``pass_fds`` and nothing else is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
import socket
import struct
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from telepath.cli.instances import InstanceFile, new_instance_id
from telepath.clock import Clock
from telepath.config import Settings
from telepath.metrics import Metrics, merge_expositions, monotonic_part
from telepath.sip.defence import DefencePolicy, SourceGuard
from telepath.transport.sip_fanout import MAX_MESSAGE, Forwarder, unpack_stream_reply

log = logging.getLogger(__name__)

RESPAWN_DELAY_S = 1.0  # after a worker's exit; doubled for each start in a row that failed
RESPAWN_MAX_DELAY_S = 30.0
READY_TIMEOUT_S = 60.0
METRICS_TIMEOUT_S = 2.0
EXIT_MARGIN_S = 5.0  # a worker's exit after its gateway stopped: heartbeat row, engine closed
_ANSWER = struct.Struct("!II")  # the request's number, the length of the text that follows
# A worker's authentication outcome, for the front to count (on the inbox pair, the other way;
# sip_fanout's messages start with b"w" or b"s"): b"a-" + source IP failed, b"a+" succeeded.
_AUTH_FAILED = b"a-"
_AUTH_OK = b"a+"


def stop_grace_s(bye_wait_s: float) -> float:
    """How long past the drain time a worker sent SIGTERM may take to exit before it is killed:
    what its gateway's stop may take past the drain, with ``TELEPATH_SIP_BYE_WAIT_S`` (its
    calls' BYEs answered and records written), and a margin for the process's exit."""
    from telepath.cli.gateway import worker_stop_s  # that module imports this one

    return worker_stop_s(bye_wait_s) + EXIT_MARGIN_S


def pack_auth_report(source_ip: str, ok: bool) -> bytes:
    """A worker's report of one digest outcome from ``source_ip`` (:class:`FrontCountedGuard`)."""
    return (_AUTH_OK if ok else _AUTH_FAILED) + source_ip.encode()


def unpack_auth_report(message: bytes) -> tuple[str, bool] | None:
    """``(source IP, succeeded)``, or None for any other message on the inbox pair."""
    kind = message[:2]
    if kind not in (_AUTH_FAILED, _AUTH_OK):
        return None
    return message[2:].decode(errors="replace"), kind == _AUTH_OK


class FrontCountedGuard(SourceGuard):
    """A SIP worker's guard: its rate limit is its own, its authentication failures are not.

    Calls — hence failed logins — spread over the workers by Call-ID: counted in each, a guesser
    would get ``N`` times ``TELEPATH_SIP_AUTH_FAILURES_BEFORE_BAN`` guesses, and a worker's ban
    would leave the others answering. So each outcome is reported to the front (``report``, one
    datagram), whose guard counts every process's, as one process would, successes clearing
    the count too; its bans come back to every worker (:meth:`SourceGuard.impose_ban`).
    Allowlisted sources are never counted, so not reported.
    """

    def __init__(
        self, policy: DefencePolicy, clock: Clock, report: Callable[[bytes], object]
    ) -> None:
        super().__init__(policy, clock)
        self._report = report

    def record_auth_failure(self, source_ip: str) -> bool:
        """Report the failure to the front, which decides the ban: never banned here."""
        if not self.is_allowlisted(source_ip):
            self._report(pack_auth_report(source_ip, ok=False))
        return False

    def record_auth_success(self, source_ip: str) -> None:
        """Report the success to the front: the source's failures are forgotten there."""
        if not self.is_allowlisted(source_ip):
            self._report(pack_auth_report(source_ip, ok=True))


def respawn_delay(failed: int) -> float:
    """Seconds before starting a worker again after ``failed`` starts in a row that failed:
    1, 2, 4 … up to 30."""
    return min(RESPAWN_DELAY_S * 2.0 ** min(failed, 16), RESPAWN_MAX_DELAY_S)


def worker_settings(settings: Settings, index: int, count: int) -> Settings:
    """``settings`` with the per-process limits and the RTP port range split ``count`` ways."""
    if count == 1:
        return settings
    span = (settings.rtp_port_max - settings.rtp_port_min + 1) // count
    span -= span % 2  # RTP even, RTCP the odd port above (RFC 3550 §11); Settings: span >= 2
    low = settings.rtp_port_min + index * span
    high = settings.rtp_port_max if index == count - 1 else low + span - 1
    # shares that add up to the setting (not ceil(max / count) each: up to count - 1 more);
    # at least one each, or a worker would refuse every call its Call-IDs bring
    calls, rest = divmod(settings.sip_max_calls, count)
    return settings.model_copy(
        update={
            "rtp_port_min": low,
            "rtp_port_max": high,
            "sip_max_calls": max(1, calls + (index < rest)),
            "sip_max_cps": settings.sip_max_cps / count,
            "sip_rate_limit_per_s": settings.sip_rate_limit_per_s / count,
            "sip_rate_burst": max(1, settings.sip_rate_burst // count),
        }
    )


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    asked: int = 0  # metrics requests sent; answers carry the number
    up: bool = False  # started and answered "ready", not exited since
    instance_id: str = ""  # this start's (cli/instances.py); its call records carry it
    last: bytes | None = None  # this process's last metrics answer (stands in when it is late)
    carried: bytes | None = None  # the counters its earlier processes ended with, summed


class WorkerPool:
    """The front's view of workers ``1 .. count - 1``: starts, restarts, asks and stops them."""

    def __init__(
        self,
        settings: Settings,
        udp_fd: int,
        udp_bound: tuple[str, int],
        ports: dict[str, int],
        nonce_secrets: list[bytes],
        metrics: Metrics | None = None,
        on_wake: Callable[[], None] | None = None,
        instances: InstanceFile | None = None,
        on_exit: Callable[[str], Awaitable[object]] | None = None,
        on_stream_reply: Callable[[int, bytes, Callable[[bytes], object]], None] | None = None,
        guard: SourceGuard | None = None,
    ) -> None:
        self.settings = settings
        # The front's guard counts the workers' authentication failures too (they report
        # them: FrontCountedGuard); every ban it decides is sent to every worker.
        self._guard = guard
        if guard is not None:
            guard.on_ban = self._ban_everywhere
        self._nonce_secrets = nonce_secrets  # one per worker, 0 (the front) included
        self.count = settings.sip_workers
        self._udp_fd = udp_fd  # the front's bound SIP UDP socket, inherited by every worker
        self._udp_bound = udp_bound
        self._ports = ports
        self._on_wake = on_wake  # a worker put a webhook event in the outbox
        self._instances = instances
        self._on_exit = on_exit  # a worker's process is gone: close what it left (its id)
        # a worker's message for a TCP/TLS connection, and how to tell that worker it could not
        # be sent (``SipServer.write_stream``)
        self._on_stream_reply = on_stream_reply
        self._metrics_of_front = metrics or Metrics()
        self.forwarder = Forwarder(
            self.count, {}, on_drop=self._metrics_of_front.sip_forward_dropped.inc
        )
        self._workers = {i: _Worker(i) for i in range(1, self.count)}
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        """Start every worker (at once: each takes about a second) and wait until each serves."""
        await asyncio.gather(*(self._spawn(worker) for worker in self._workers.values()))
        for worker in self._workers.values():
            self._watchers.append(asyncio.create_task(self._watch(worker)))

    async def _spawn(self, worker: _Worker) -> None:
        """Start a process for ``worker`` and wait until it serves.

        Raises ``OSError`` when no process could be started (socket pairs or fork refused:
        EMFILE, ENOMEM, EAGAIN), with nothing of the attempt left open. A process that starts
        but does not come to serve is killed: its watcher sees it exit, as any other.
        """
        inbox_front, ctl_front = await self._start_process(worker)
        assert worker.process is not None
        if self._stopping:  # stop() signalled the processes there were while this one started
            inbox_front.close()
            ctl_front.close()
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
            return  # not greeted: it exits, its watcher waits for that and ends
        inbox_front.setblocking(False)
        self._close_outbox(worker.index)
        self.forwarder.attach(worker.index, inbox_front)  # closed when the process exits
        asyncio.get_running_loop().add_reader(
            inbox_front.fileno(), self._woken, worker.index, inbox_front
        )
        try:
            ready = await self._greet(worker, ctl_front)
        except OSError as exc:  # it died at once (the hello's write failed)
            log.error("SIP worker %d did not start: %s", worker.index, exc)
            ready = False
        if not ready:
            log.error("SIP worker %d did not start (pid %d)", worker.index, worker.process.pid)
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
            return
        worker.up = True
        self._count_up()
        log.info("SIP worker %d started (pid %d)", worker.index, worker.process.pid)

    async def _start_process(self, worker: _Worker) -> tuple[socket.socket, socket.socket]:
        """The new process's socket pairs' front ends (inbox, control); ``OSError`` if it could
        not be started, every descriptor of the attempt closed and its instance id dropped."""
        worker.process = None
        ends: list[socket.socket] = []
        try:
            ends += socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            ends += socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:
            for end in ends:
                end.close()
            raise
        inbox_front, inbox_worker, ctl_front, ctl_worker = ends
        fds = (self._udp_fd, inbox_worker.fileno(), ctl_worker.fileno())
        # the instances file's lock is held by every worker too, for as long as it lives
        lock = self._instances.fileno() if self._instances is not None else None
        worker.instance_id = new_instance_id()
        if self._instances is not None:
            self._instances.add(worker.instance_id)
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "telepath",
                "sip-worker",
                *(str(fd) for fd in fds),
                pass_fds=fds if lock is None else (*fds, lock),
            )
        except OSError:
            inbox_front.close()
            ctl_front.close()
            if self._instances is not None:
                self._instances.discard(worker.instance_id)
            raise
        finally:  # the worker's ends are the child's now (or nobody's)
            inbox_worker.close()
            ctl_worker.close()
        return inbox_front, ctl_front

    async def _greet(self, worker: _Worker, ctl: socket.socket) -> bool:
        """Send the worker its settings on ``ctl`` and wait until it serves (the front's HTTP
        API, readiness, waits for it): True once it answered ``ready``."""
        try:
            worker.reader, worker.writer = await asyncio.open_unix_connection(sock=ctl)
        except OSError:
            ctl.close()
            raise
        hello = {
            "index": worker.index,
            "instance_id": worker.instance_id,
            "settings": worker_settings(self.settings, worker.index, self.count).model_dump(
                mode="json"
            ),
            "ports": self._ports,
            "nonce_secrets": [secret.hex() for secret in self._nonce_secrets],
            "udp": list(self._udp_bound),
            "bans": self._guard.banned() if self._guard is not None else [],
        }
        worker.writer.write(json.dumps(hello).encode() + b"\n")
        await worker.writer.drain()
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                return await worker.reader.readline() == b"ready\n"
        except TimeoutError:
            return False

    async def _watch(self, worker: _Worker) -> None:
        """Start ``worker`` again whenever its process exits, until the pool stops.

        Starts that fail in a row (no process, or one that never served) wait longer each
        time (:func:`respawn_delay`): a machine out of processes or descriptors is not
        hammered, nor the log flooded, and the worker comes back once it can.

        A worker exits 0 only when told to stop: by a signal (SIGTERM/SIGINT) or by its
        control channel's end. When the front is signalled too — a process group's signal,
        from systemd's ``KillMode=control-group`` or Ctrl-C — :meth:`stopping` was called
        at once and nothing is started again; a clean exit is therefore no crash (no error
        logged). It is still started again after the delay if the front goes on serving
        (one worker signalled alone): its calls would have no process for good otherwise.
        A restart is counted when the new process is started, not at the exit.
        """
        failed = 0  # starts in a row that did not get a process serving
        exited = False  # since the last restart counted
        while True:
            if worker.process is not None:
                served = worker.up
                await self._exited(worker)
                exited = True
                failed = 0 if served else failed + 1
                if self._stopping:
                    return
            await asyncio.sleep(respawn_delay(failed))
            if self._stopping:
                return
            if exited:
                self._metrics_of_front.sip_worker_restarts.inc()
                exited = False
            try:
                await self._spawn(worker)
            except OSError as exc:
                failed += 1
                log.error(
                    "SIP worker %d could not be started (%s): trying again in %.0f s",
                    worker.index,
                    exc,
                    respawn_delay(failed),
                )

    async def _exited(self, worker: _Worker) -> None:
        """Wait until the worker's process exits, then close what it leaves."""
        assert worker.process is not None
        code = await worker.process.wait()
        worker.up = False
        self._count_up()
        self._close_outbox(worker.index)  # its TCP/TLS messages wait for the next process
        if not self._stopping and code == 0:  # told to stop, not by this process: see _watch
            log.warning(
                "SIP worker %d was stopped (not by this process): starting it again", worker.index
            )
        elif not self._stopping:
            log.error("SIP worker %d exited (code %s): starting it again", worker.index, code)
        # its records still open (none after a clean drain) can no longer be ended by it
        if self._on_exit is not None:
            await self._on_exit(worker.instance_id)
        if self._instances is not None:
            self._instances.discard(worker.instance_id)
        async with worker.lock:  # after a metrics request in flight: its answer is the last
            self._retire(worker)
            self._close_control(worker)
        worker.process = None

    def _woken(self, index: int, sock: socket.socket) -> None:
        """Worker ``index`` wrote on its inbox pair the other way: webhook events are waiting,
        messages for the front's TCP/TLS connections, or authentication outcomes."""
        wake = False
        tell = functools.partial(self.forwarder.unsent, index)  # one of its messages not sent
        for _ in range(64):  # bounded: the loop's other callbacks (media) must not starve
            try:
                message = sock.recv(MAX_MESSAGE)
            except OSError:  # drained
                break
            auth = unpack_auth_report(message)
            if auth is not None:
                self._auth_reported(*auth)
                continue
            reply = unpack_stream_reply(message)
            if reply is None:
                wake = True  # one wake-up stands for any number of events
            elif self._on_stream_reply is not None:
                self._on_stream_reply(*reply, tell)
        if wake and self._on_wake is not None:
            self._on_wake()

    def _auth_reported(self, source_ip: str, ok: bool) -> None:
        """A worker's digest outcome, counted as if the front's own call had it."""
        if self._guard is None:
            return
        if ok:
            self._guard.record_auth_success(source_ip)
        elif self._guard.record_auth_failure(source_ip):  # _ban_everywhere was told
            log.warning("banned a SIP source after repeated authentication failures")

    def _ban_everywhere(self, source_ip: str, seconds: float) -> None:
        """The front's guard banned a source: every worker bans it too."""
        line = f"ban {source_ip} {seconds:.3f}\n".encode()
        for worker in self._workers.values():
            if worker.writer is not None and not worker.writer.is_closing():
                worker.writer.write(line)

    def _count_up(self) -> None:
        self._metrics_of_front.sip_workers_up.set(sum(w.up for w in self._workers.values()))

    def all_up(self) -> bool:
        """Every worker serves (``/readyz``): False while one is being started again."""
        return all(w.up for w in self._workers.values())

    @staticmethod
    def _close_control(worker: _Worker) -> None:
        if worker.writer is not None:
            worker.writer.close()
        worker.reader = worker.writer = None

    async def metrics(self) -> list[bytes]:
        """Every worker's metrics (Prometheus texts, to add up), counters never falling.

        ``/metrics`` adds these to the front's own. Whatever a worker does, what it contributes
        to a counter or a histogram never goes down (Prometheus would read a reset): one that
        does not answer in time is shown by its last answer, and each worker's counters
        include the last ones of its earlier processes (a process started again counts from
        0). A dead process's gauges (its active calls) are not shown: its calls are gone.
        """
        answers = await asyncio.gather(*(self._metrics(w) for w in self._workers.values()))
        return [text for texts in answers for text in texts]

    async def _metrics(self, worker: _Worker) -> list[bytes]:
        async with worker.lock:
            carried = [worker.carried] if worker.carried is not None else []
            if not worker.up or worker.reader is None or worker.writer is None:
                # none serving: gone (its counts, until carried over), or being started, its
                # control channel read by the start (a second reader there raises)
                return _counts_only(worker.last, carried)
            worker.asked += 1
            try:
                async with asyncio.timeout(METRICS_TIMEOUT_S):
                    worker.writer.write(f"metrics {worker.asked}\n".encode())
                    await worker.writer.drain()
                    while True:  # an answer too late for an earlier request is skipped
                        head = await worker.reader.readexactly(_ANSWER.size)
                        number, length = _ANSWER.unpack(head)
                        body = await worker.reader.readexactly(length)
                        if number == worker.asked:
                            worker.last = body
                            return [body, *carried]
            except TimeoutError:  # a busy worker: its answer is skipped when it comes
                log.warning("SIP worker %d did not report its metrics in time", worker.index)
                return [worker.last, *carried] if worker.last is not None else carried
            except (OSError, asyncio.IncompleteReadError):
                # the worker is gone (its watcher starts it again): its counts, not its gauges
                return _counts_only(worker.last, carried)

    @staticmethod
    def _retire(worker: _Worker) -> None:
        """The worker's process is gone: its last counts carry over to its next processes."""
        if worker.last is None:
            return
        ended = monotonic_part(worker.last)
        worker.carried = (
            ended if worker.carried is None else merge_expositions([worker.carried, ended])
        )
        worker.last = None

    def trunk_removed(self, trunk_id: str) -> None:
        """Tell every worker a trunk was deleted or deactivated: its live calls end."""
        for worker in self._workers.values():
            if worker.writer is not None and not worker.writer.is_closing():
                worker.writer.write(f"trunk_removed {trunk_id}\n".encode())

    def stopping(self) -> None:
        """The front is stopping: a worker that exits from now on is not started again.

        Called as soon as the front receives SIGTERM/SIGINT (``cli/serve.py``), before its HTTP
        server has finished and :meth:`stop` runs: the workers may have the signal too (it
        went to the process group) and exit meanwhile.
        """
        self._stopping = True
        self.forwarder.stopping = True  # what a worker gone now owned, the front answers

    async def stop(self, drain_s: float) -> None:
        """SIGTERM every worker (each drains its calls for ``drain_s``), then wait; kill what
        is left ``stop_grace_s`` after the drain time. A worker whose process was being
        started meanwhile gets SIGTERM once it is (:meth:`_spawn`)."""
        self.stopping()
        procs = [w.process for w in self._workers.values() if w.process is not None]
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        waits = [asyncio.ensure_future(p.wait()) for p in procs]
        if waits:
            grace_s = stop_grace_s(self.settings.sip_bye_wait_s)
            _, pending = await asyncio.wait(waits, timeout=drain_s + grace_s)
            for proc in procs:
                if proc.returncode is None:
                    log.error("SIP worker (pid %d) did not stop: killed", proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self._watchers:  # each closes its worker's records left open (a killed worker's)
            await asyncio.wait(self._watchers, timeout=15)
        for watcher in self._watchers:
            watcher.cancel()
        for worker in self._workers.values():
            self._close_control(worker)
        for index in list(self.forwarder.outboxes):
            self._close_outbox(index)

    def _close_outbox(self, index: int) -> None:
        outbox = self.forwarder.detach(index)
        if outbox is not None:
            asyncio.get_running_loop().remove_reader(outbox.fileno())
            outbox.close()


# ---------------------------------------------------------------- the worker process


def worker_commands(
    guard: SourceGuard | None, trunk_removed: Callable[[str], object]
) -> dict[str, Callable[[str], object]]:
    """What a worker does with the front's lines besides ``metrics``: ``trunk_removed <id>``
    (its calls on that trunk end) and ``ban <ip> <seconds>`` (a ban the front decided)."""

    def ban(arg: str) -> None:
        source_ip, _, seconds = arg.partition(" ")
        if guard is not None:
            guard.impose_ban(source_ip, float(seconds or 0))

    return {"trunk_removed": trunk_removed, "ban": ban}


async def _serve_control(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    render: Callable[[], bytes],
    commands: Mapping[str, Callable[[str], object]],
    stop: asyncio.Event,
) -> None:
    """Serve the front's requests until the channel ends; then set ``stop``, however it ended.

    The front gone shows as an end of file, or — when it dies while a ``metrics`` answer is
    being written — as a failed write: either way nobody will stop this worker any more, and
    it would live on holding the SIP port and the instances file's lock.
    """
    try:
        while True:
            line = await reader.readline()
            if not line:
                log.warning("the front process is gone: stopping")
                return
            command, _, arg = line.decode().strip().partition(" ")
            if command == "metrics" and arg.isdigit():
                body = render()
                writer.write(_ANSWER.pack(int(arg), len(body)) + body)
                await writer.drain()
            elif command in commands and arg:
                commands[command](arg)
    except Exception as exc:  # whatever broke the channel, the front cannot reach us: stop
        log.warning("the control channel to the front failed (%s): stopping", type(exc).__name__)
    finally:
        stop.set()


async def run_worker(udp_fd: int, inbox_fd: int, ctl_fd: int) -> None:
    """``telepath sip-worker``: one worker's calls, until SIGTERM or the front goes away."""
    from telepath.cli.gateway import NonceKeys, WorkerRole, start_gateway
    from telepath.cli.runtime import open_state
    from telepath.cli.serve import settle_heap
    from telepath.log import configure_logging

    udp = socket.socket(fileno=udp_fd)
    inbox = socket.socket(fileno=inbox_fd)
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=ctl_fd))
    hello = json.loads(await reader.readline())
    settings = Settings(**hello["settings"])
    configure_logging(settings.log_level, settings.log_format, int(hello["index"]))
    role = WorkerRole(
        index=int(hello["index"]),
        udp=udp,
        inbox=inbox,
        udp_bound=(str(hello["udp"][0]), int(hello["udp"][1])),
        ports={str(k): int(v) for k, v in hello["ports"].items()},
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_state(settings, migrate=False) as state:
        secrets = [bytes.fromhex(secret) for secret in hello["nonce_secrets"]]
        gateway = await start_gateway(
            settings,
            state,
            role,
            NonceKeys.split(secrets, role.index),
            instance_id=str(hello["instance_id"]),
        )
        guard = gateway.manager.guard
        if guard is not None:  # the bans in force when this process started
            for source_ip, seconds in hello.get("bans", []):
                guard.impose_ban(str(source_ip), float(seconds))
        settle_heap()
        unwatch_gc = state.metrics.watch_gc()
        writer.write(b"ready\n")
        await writer.drain()
        commands = worker_commands(guard, gateway.manager.trunk_removed)
        control = asyncio.create_task(
            _serve_control(reader, writer, state.metrics.render, commands, stop)
        )
        await stop.wait()
        log.info("SIP worker %d: draining calls", role.index)
        await gateway.stop(settings.sip_drain_timeout_s)
        control.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await control
        unwatch_gc()
    writer.close()


def main(udp_fd: int, inbox_fd: int, ctl_fd: int) -> None:
    """Entry point of ``telepath sip-worker`` (started by :class:`WorkerPool`, not by hand)."""
    from telepath.cli.serve import install_event_loop

    install_event_loop()
    asyncio.run(run_worker(udp_fd, inbox_fd, ctl_fd))


def _counts_only(last: bytes | None, carried: list[bytes]) -> list[bytes]:
    """A worker process that does not serve: its last counters (not its gauges: its calls are
    gone), until they are carried over to the next process, beside those carried already."""
    return carried if last is None else [monotonic_part(last), *carried]
