"""SIP worker processes: per-process limits split between workers; metrics merged."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from telepath.cli import workers
from telepath.cli.gateway import WorkerRole
from telepath.cli.workers import worker_settings
from telepath.clock import FakeClock
from telepath.config import Settings
from telepath.metrics import Metrics, merge_expositions
from telepath.sip.defence import DefencePolicy, SourceGuard
from telepath.sip.ua import UaConfig, UserAgentCore
from telepath.transport.sip_fanout import pack_stream_reply, unpack
from telepath.transport.sip_server import SipServer


def _settings(**kw: object) -> Settings:
    base: dict[str, object] = {
        "rtp_port_min": 20000,
        "rtp_port_max": 30000,
        "sip_max_calls": 501,
        "sip_max_cps": 300.0,
        "sip_rate_limit_per_s": 50.0,
        "sip_rate_burst": 201,
        "sip_workers": 3,
    }
    return Settings(**{**base, **kw})  # type: ignore[arg-type]


def test_one_worker_keeps_the_settings() -> None:
    s = _settings(sip_workers=1)
    assert worker_settings(s, 0, 1) is s


def test_port_ranges_are_disjoint_even_and_inside_the_configured_one() -> None:
    s = _settings()
    parts = [worker_settings(s, i, 3) for i in range(3)]
    ranges = [(p.rtp_port_min, p.rtp_port_max) for p in parts]
    assert ranges[0][0] == 20000 and ranges[-1][1] == 30000
    for (_, high), (next_low, _) in zip(ranges, ranges[1:], strict=False):
        assert high < next_low
        assert next_low == high + 1  # no port left out between two workers
    assert all(low % 2 == 0 and high > low for low, high in ranges)


def test_limits_are_split() -> None:
    s = _settings()
    part = worker_settings(s, 1, 3)
    assert part.sip_max_calls == 167  # 501 / 3
    # the total is the setting, never above it (nor below): 500 = 167 + 167 + 166
    shares = [worker_settings(_settings(sip_max_calls=500), i, 3).sip_max_calls for i in range(3)]
    assert shares == [167, 167, 166]
    # fewer calls than workers: each still takes one (else its share of calls would all be
    # refused, whatever the load); the total is then the number of workers
    assert [worker_settings(_settings(sip_max_calls=2), i, 3).sip_max_calls for i in range(3)] == [
        1,
        1,
        1,
    ]
    assert part.sip_max_cps == pytest.approx(100.0)
    assert part.sip_rate_limit_per_s == pytest.approx(50 / 3)
    assert part.sip_rate_burst == 67
    assert worker_settings(_settings(sip_max_cps=0.0), 1, 3).sip_max_cps == 0  # 0 stays "off"
    # the rest is the same
    assert part.sip_port == s.sip_port and part.database_url == s.database_url


def test_a_range_too_small_to_split_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="too small for TELEPATH_SIP_WORKERS"):
        _settings(rtp_port_min=20000, rtp_port_max=20003)
    _settings(rtp_port_min=20000, rtp_port_max=20005)  # two ports each: enough


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_metrics_of_several_workers_add_up() -> None:
    front, worker = Metrics(), Metrics()
    front.record_call_started("a")
    front.record_call_ended("a", outcome="caller_hangup", setup_ms=20)
    front.record_call_started("b")  # still up
    worker.record_call_started("c")
    worker.record_call_ended("c", outcome="caller_hangup", setup_ms=200)
    worker.record_call_started("d")
    worker.record_call_ended("d", outcome="agent_hangup", setup_ms=30)
    front.loop_busy.set(0.25)
    worker.loop_busy.set(0.75)
    merged = _samples(merge_expositions([front.render(), worker.render()]))
    assert merged[("telepath_calls_total", (("outcome", "caller_hangup"),))] == 2
    assert merged[("telepath_calls_total", (("outcome", "agent_hangup"),))] == 1
    assert merged[("telepath_active_calls", ())] == 1
    assert merged[("telepath_call_setup_seconds_count", ())] == 3
    assert merged[("telepath_call_setup_seconds_sum", ())] == pytest.approx(0.25)
    assert merged[("telepath_call_setup_seconds_bucket", (("le", "0.025"),))] == 1
    assert merged[("telepath_call_setup_seconds_bucket", (("le", "0.05"),))] == 2
    assert merged[("telepath_call_setup_seconds_bucket", (("le", "+Inf"),))] == 3
    assert merged[("telepath_event_loop_busy_ratio", ())] == 0.75  # the busiest, not a sum
    created = ("telepath_calls_created", (("outcome", "caller_hangup"),))
    firsts = [_samples(m.render())[created] for m in (front, worker)]
    assert merged[created] == min(firsts)


def test_merging_one_exposition_changes_nothing() -> None:
    metrics = Metrics()
    metrics.record_call_started("a")
    metrics.record_call_ended("a", outcome="caller_hangup", setup_ms=20)
    assert _samples(merge_expositions([metrics.render()])) == _samples(metrics.render())


async def test_a_late_metrics_answer_is_not_taken_for_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers, "METRICS_TIMEOUT_S", 0.2)
    pool = workers.WorkerPool(_settings(sip_workers=2), -1, ("127.0.0.1", 5060), {}, [b"k"] * 2)
    front, worker_end = socket.socketpair()
    worker = pool._workers[1]
    worker.reader, worker.writer = await asyncio.open_connection(sock=front)
    worker.up = True  # it said "ready"
    reader, writer = await asyncio.open_connection(sock=worker_end)
    try:
        assert await pool.metrics() == []  # the worker is slow: nothing, and no error
        assert await reader.readline() == b"metrics 1\n"
        writer.write(struct.pack("!II", 1, 4) + b"late")  # the answer to the first, too late

        async def answer_second() -> None:
            assert await reader.readline() == b"metrics 2\n"
            writer.write(struct.pack("!II", 2, 5) + b"fresh")

        monkeypatch.setattr(workers, "METRICS_TIMEOUT_S", 10)  # this one is answered
        answering = asyncio.create_task(answer_second())
        assert await pool.metrics() == [b"fresh"]
        await answering
    finally:
        writer.close()
        worker.writer.close()


# ---------------------------------------------------------------- a pool of fake worker processes


class FakeWorker:
    """Stands in for a ``telepath sip-worker`` process started by the pool: on the control
    channel it answers the hello with ``ready``, then each ``metrics <n>`` with ``text``."""

    pids = iter(range(10_000, 20_000))

    def __init__(self, inbox_fd: int, ctl_fd: int, ready_delay_s: float = 0.0) -> None:
        # the pool closes its copies of the worker's ends once the process is started
        self.inbox = socket.socket(fileno=os.dup(inbox_fd))
        self.ctl = socket.socket(fileno=os.dup(ctl_fd))
        self.pid = next(self.pids)
        self.returncode: int | None = None
        self.text = b""  # what it answers to "metrics <n>"
        self.silent = False  # does not answer (a busy worker)
        self.lines: list[str] = []  # every control line after the hello
        self.hello: dict[str, Any] = {}
        self.ready_delay_s = ready_delay_s  # how long it takes to start serving
        self.stops_after_s = 0.0  # how long it takes to exit once sent SIGTERM
        self._exited = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._task = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self.ctl)
        self.hello = json.loads(await reader.readline())
        await asyncio.sleep(self.ready_delay_s)
        self._writer.write(b"ready\n")
        while line := await reader.readline():
            self.lines.append(line.decode().strip())
            command, _, number = line.decode().strip().partition(" ")
            if command == "metrics" and not self.silent:
                self._writer.write(struct.pack("!II", int(number), len(self.text)) + self.text)

    def exit(self, code: int) -> None:
        """The process ends: its descriptors close, ``wait()`` returns ``code``."""
        if self.returncode is not None:
            return
        self.returncode = code
        self._task.cancel()
        if self._writer is not None:
            self._writer.close()
        self.ctl.close()
        self.inbox.close()
        self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        # SIGTERM: it drains (taking ``stops_after_s``) and exits cleanly
        if self.stops_after_s:
            asyncio.get_running_loop().call_later(self.stops_after_s, self.exit, 0)
        else:
            self.exit(0)

    def kill(self) -> None:
        self.exit(-9)


class FakeExec:
    """``asyncio.create_subprocess_exec`` for the pool: each start is a :class:`FakeWorker`;
    ``failures`` starts in a row raise ``OSError`` first (fork's EAGAIN)."""

    def __init__(self) -> None:
        self.started: list[FakeWorker] = []
        self.failures = 0
        self.attempts = 0
        self.ready_delay_s = 0.0  # of the workers started from now on
        self.gate: asyncio.Event | None = None  # set: each start waits for it
        self.starting = asyncio.Event()  # a start has begun

    async def __call__(self, *args: str, pass_fds: tuple[int, ...] = ()) -> FakeWorker:
        self.attempts += 1
        self.starting.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        _udp, inbox, ctl = (int(a) for a in args[-3:])
        self.started.append(FakeWorker(inbox, ctl, self.ready_delay_s))
        return self.started[-1]


@pytest.fixture
def fake_exec(monkeypatch: pytest.MonkeyPatch) -> FakeExec:
    fake = FakeExec()
    monkeypatch.setattr(asyncio, "create_subprocess_exec", fake)
    monkeypatch.setattr(workers, "RESPAWN_DELAY_S", 0.05)
    return fake


def _pool(
    metrics: Metrics | None = None,
    on_exit: Callable[[str], Awaitable[object]] | None = None,
    guard: SourceGuard | None = None,
    **settings: object,
) -> workers.WorkerPool:
    return workers.WorkerPool(
        _settings(sip_workers=2, **settings),
        -1,
        ("127.0.0.1", 5060),
        {},
        [b"k"] * 2,
        metrics,
        on_exit=on_exit,
        guard=guard,
    )


async def _until(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110 - the pool exposes states, not events
            await asyncio.sleep(0.01)


def _exposition(ended: int, active: int) -> bytes:
    """A worker's metrics: ``ended`` calls ended (set-up 20 ms each), ``active`` still up."""
    metrics = Metrics()
    for i in range(ended):
        metrics.record_call_started(f"ended-{i}")
        metrics.record_call_ended(f"ended-{i}", outcome="caller_hangup", setup_ms=20)
    for i in range(active):
        metrics.record_call_started(f"up-{i}")
    return metrics.render()


async def _scrape(pool: workers.WorkerPool) -> dict[str, float]:
    """What ``GET /metrics`` shows (the front has no calls of its own here)."""
    merged = _samples(merge_expositions([Metrics().render(), *await pool.metrics()]))
    return {
        "calls": merged.get(("telepath_calls_total", (("outcome", "caller_hangup"),)), 0.0),
        "setups": merged[("telepath_call_setup_seconds_count", ())],
        "fast_setups": merged[("telepath_call_setup_seconds_bucket", (("le", "0.025"),))],
        "active": merged[("telepath_active_calls", ())],
    }


async def test_merged_counters_never_go_back_when_a_worker_is_slow_or_restarted(
    fake_exec: FakeExec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A counter that falls is a reset to Prometheus: ``increase()`` would invent calls."""
    monkeypatch.setattr(workers, "METRICS_TIMEOUT_S", 0.1)
    closing = asyncio.Event()  # the front closing the dead process's call records

    async def exited(instance_id: str) -> None:
        await closing.wait()

    pool = _pool(on_exit=exited)
    await pool.start()
    try:
        (first,) = fake_exec.started
        first.text = _exposition(ended=5, active=2)
        before = await _scrape(pool)
        assert before == {"calls": 5, "setups": 5, "fast_setups": 5, "active": 2}
        first.silent = True  # a round it misses: its last answer stands in
        assert await _scrape(pool) == before
        first.silent = False

        monkeypatch.setattr(workers, "RESPAWN_DELAY_S", 0.3)
        first.exit(1)  # it dies; its calls end (lost): no active call of it is left
        await _until(lambda: not pool.all_up())
        gone = {"calls": 5, "setups": 5, "fast_setups": 5, "active": 0}
        assert await _scrape(pool) == gone  # its control channel dead, not yet closed
        closing.set()
        await asyncio.sleep(0.1)  # the exit handled, the new process not yet started
        assert await _scrape(pool) == gone

        await _until(lambda: len(fake_exec.started) == 2 and pool.all_up())
        second = fake_exec.started[1]
        second.text = _exposition(ended=1, active=1)  # its own counters start at 0
        after = await _scrape(pool)
        assert after == {"calls": 6, "setups": 6, "fast_setups": 6, "active": 1}
        second.silent = True
        assert await _scrape(pool) == after  # and a missed round after the restart
    finally:
        closing.set()
        await pool.stop(0)


async def test_metrics_while_a_worker_is_being_started_again_do_not_fail(
    fake_exec: FakeExec,
) -> None:
    """A scrape while a restarted worker has not said ``ready`` yet: the start is reading its
    control channel, and a second reader there raised RuntimeError (``GET /metrics`` 500)."""
    pool = _pool()
    await pool.start()
    try:
        (first,) = fake_exec.started
        first.text = _exposition(ended=3, active=0)
        assert (await _scrape(pool))["calls"] == 3
        fake_exec.ready_delay_s = 0.5
        first.exit(1)
        await _until(lambda: len(fake_exec.started) == 2 and bool(fake_exec.started[1].hello))
        assert not pool.all_up()  # greeted, its "ready" not come yet
        assert (await _scrape(pool))["calls"] == 3  # its counts carried, nothing raised
        await _until(pool.all_up)
        fake_exec.started[1].text = _exposition(ended=1, active=0)
        assert (await _scrape(pool))["calls"] == 4
    finally:
        await pool.stop(0)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_worker_that_could_not_be_started_is_tried_again_and_leaks_nothing(
    fake_exec: FakeExec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No process for the moment (fork's EAGAIN, EMFILE): its calls would have nowhere to go
    for good if the pool gave up; each attempt's socket pairs must not stay open."""
    waits: list[float] = []
    sleep = asyncio.sleep

    async def timed(delay: float) -> None:
        if delay >= workers.RESPAWN_DELAY_S:  # the pool's waits, not this test's polling
            waits.append(delay)
        await sleep(delay)

    monkeypatch.setattr(asyncio, "sleep", timed)
    pool = _pool()
    await pool.start()
    try:
        (first,) = fake_exec.started
        serving = _open_fds()  # the pool's ends and the fake process's
        fake_exec.failures = 2
        first.exit(-9)
        await _until(lambda: len(fake_exec.started) == 2 and pool.all_up())
        assert fake_exec.attempts == 4  # the first start, two refused, the one that worked
        assert _open_fds() == serving  # nothing of the refused attempts left open
        assert waits == [0.05, 0.1, 0.2]  # RESPAWN_DELAY_S, then doubled for each failure
    finally:
        await pool.stop(0)


def test_starts_that_keep_failing_wait_longer_each_time() -> None:
    delays = [workers.respawn_delay(failed) for failed in range(8)]
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    assert workers.respawn_delay(10_000) == 30


async def test_a_worker_stops_when_its_control_channel_fails() -> None:
    """The front gone while it waits for metrics: the answer's write fails (EPIPE), not a
    read's end of file. The worker must stop all the same, else it lives on for ever,
    holding the SIP port and the instances file's lock."""
    front, worker_end = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=worker_end)
    stop = asyncio.Event()

    def big() -> bytes:
        return b"x" * 1_000_000

    control = asyncio.create_task(workers._serve_control(reader, writer, big, {}, stop))
    front.sendall(b"metrics 1\n")
    front.close()
    try:
        async with asyncio.timeout(5):
            await stop.wait()
    finally:
        control.cancel()
        await asyncio.gather(control, return_exceptions=True)
        writer.close()


def _restarts(metrics: Metrics) -> float:
    return _samples(metrics.render())[("telepath_sip_worker_restarts_total", ())]


async def test_a_worker_that_stops_cleanly_as_the_front_stops_is_no_crash(
    fake_exec: FakeExec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM to the whole process group (systemd's KillMode=control-group, Ctrl-C): the
    worker drains and exits 0 before the front gets to stop() — no restart, none counted."""
    monkeypatch.setattr(workers, "RESPAWN_DELAY_S", 0.3)
    metrics = Metrics()
    pool = _pool(metrics)
    await pool.start()
    (first,) = fake_exec.started
    first.exit(0)
    await _until(lambda: not pool.all_up())
    await asyncio.sleep(0.1)
    await pool.stop(0)  # the front's HTTP server took a while to finish
    await asyncio.sleep(0.3)
    assert len(fake_exec.started) == 1
    assert _restarts(metrics) == 0


async def test_a_signalled_front_starts_no_worker_again(
    fake_exec: FakeExec, caplog: pytest.LogCaptureFixture
) -> None:
    """The front marks the pool stopping as the signal arrives (``serve``), before its HTTP
    server has finished: a worker exiting meanwhile, however, is not started again."""
    metrics = Metrics()
    pool = _pool(metrics)
    await pool.start()
    (first,) = fake_exec.started
    pool.stopping()
    first.exit(1)
    await _until(lambda: not pool.all_up())
    await asyncio.sleep(0.2)
    assert len(fake_exec.started) == 1
    assert _restarts(metrics) == 0
    assert "starting it again" not in caplog.text
    await pool.stop(0)


async def test_a_worker_started_again_while_the_pool_stops_is_stopped_too(
    fake_exec: FakeExec, caplog: pytest.LogCaptureFixture
) -> None:
    """stop() signals the processes it knows of: one being started again at that moment (its
    process not there yet) must get SIGTERM too once it is, not serve on alone."""
    pool = _pool()
    await pool.start()
    (first,) = fake_exec.started
    fake_exec.gate = asyncio.Event()
    fake_exec.starting.clear()
    first.exit(1)  # crashed: started again after the delay
    await fake_exec.starting.wait()  # the new process is being started
    stop = asyncio.create_task(pool.stop(0))
    await asyncio.sleep(0)  # stop() has signalled what it knew of
    fake_exec.gate.set()
    await stop
    (_, second) = fake_exec.started
    assert second.returncode == 0  # sent SIGTERM: it drained and exited (not killed, -9)
    assert "did not start" not in caplog.text


async def test_a_worker_stopped_alone_is_started_again(fake_exec: FakeExec) -> None:
    """SIGTERM to one worker only: it exits 0, but its calls must not stay without a process."""
    metrics = Metrics()
    pool = _pool(metrics)
    await pool.start()
    try:
        (first,) = fake_exec.started
        first.exit(0)
        await _until(lambda: len(fake_exec.started) == 2 and pool.all_up())
        assert _restarts(metrics) == 1
    finally:
        await pool.stop(0)


@contextlib.asynccontextmanager
async def _time_flies(step_s: float) -> AsyncIterator[None]:
    """The running loop's clock moves ``step_s`` ahead at each turn of the loop (and the loop
    never sleeps): its timers fire in the order of their times, tens of seconds apart in a
    fraction of a second. Nothing but timers on this loop may be told apart by time."""
    loop = asyncio.get_running_loop()
    real = loop.time
    ahead = 0.0

    async def tick() -> None:
        nonlocal ahead
        while True:
            ahead += step_s
            await asyncio.sleep(0)

    loop.time = lambda: real() + ahead  # type: ignore[method-assign]
    ticking = asyncio.create_task(tick())
    try:
        yield
    finally:
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking
        del loop.time  # the class's own again


async def test_a_worker_is_given_its_calls_bye_wait_before_it_is_killed(
    fake_exec: FakeExec, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker's calls ended at the drain's end get 5 s plus TELEPATH_SIP_BYE_WAIT_S to send
    BYE and write their records (README), those that overran that are cancelled and awaited
    as long again, then its writers get 5 s: a worker that takes all of it, and a second
    more, to exit is not killed."""
    bye_wait_s = 20.0
    pool = _pool(sip_drain_timeout_s=3, sip_bye_wait_s=bye_wait_s)
    await pool.start()
    (worker,) = fake_exec.started
    worker.stops_after_s = 3 + 2 * (5 + bye_wait_s) + 5 + 1
    async with _time_flies(0.05):
        await pool.stop(3)
    assert worker.returncode == 0  # it exited: not killed (-9)
    assert "did not stop" not in caplog.text


async def test_a_worker_that_does_not_exit_is_killed_in_the_end(
    fake_exec: FakeExec, caplog: pytest.LogCaptureFixture
) -> None:
    pool = _pool(sip_drain_timeout_s=3, sip_bye_wait_s=32)
    await pool.start()
    (worker,) = fake_exec.started
    worker.stops_after_s = 3600.0  # stuck
    async with _time_flies(0.05):
        await pool.stop(3)
    assert worker.returncode == -9
    assert "did not stop: killed" in caplog.text


def test_the_front_tells_the_pool_of_a_signal_at_once() -> None:
    """uvicorn's handler takes SIGINT/SIGTERM while it serves; the workers may get the same
    signal (a process group) and exit before uvicorn has finished."""
    from telepath.cli.serve import HttpServer

    told: list[bool] = []
    server = HttpServer(uvicorn.Config(app=lambda: None), on_signal=lambda: told.append(True))
    server.handle_exit(signal.SIGTERM, None)
    assert told == [True] and server.should_exit


# ---------------------------------------------------------------- auth-failure bans, all workers

SOURCE = "203.0.113.9"


def _policy(**kw: object) -> DefencePolicy:
    return DefencePolicy(auth_failures_before_ban=3, ban_seconds=300, **kw)  # type: ignore[arg-type]


async def test_auth_failures_are_counted_across_workers_and_a_ban_reaches_every_worker(
    fake_exec: FakeExec,
) -> None:
    """Calls, hence failed logins, spread over the workers by Call-ID: counted in each, a
    guesser would get N times the allowed guesses, and one worker's ban would not stop the
    others. The front counts them all; its ban is every worker's and refuses connections."""
    clock = FakeClock(100.0)
    front = SourceGuard(_policy(), clock)
    pool = _pool(guard=front)
    await pool.start()
    try:
        (worker,) = fake_exec.started
        own = workers.FrontCountedGuard(_policy(), clock, report=worker.inbox.send)
        assert not front.record_auth_failure(SOURCE)  # on a call the front owns
        assert not own.record_auth_failure(SOURCE)  # two on calls the worker owns
        assert not own.record_auth_failure(SOURCE)
        await _until(lambda: front.is_banned(SOURCE))  # three in all: as one process would
        assert not own.is_banned(SOURCE)  # the worker does not decide alone
        await _until(lambda: any(line.startswith("ban ") for line in worker.lines))
        (ban,) = [line.split() for line in worker.lines if line.startswith("ban ")]
        assert ban[:2] == ["ban", SOURCE] and float(ban[2]) == pytest.approx(300)

        clock.advance(100)
        worker.exit(-9)  # its next process knows the bans in force
        await _until(lambda: len(fake_exec.started) == 2 and pool.all_up())
        ((ip, remaining),) = fake_exec.started[1].hello["bans"]
        assert ip == SOURCE and remaining == pytest.approx(200)
    finally:
        await pool.stop(0)


async def test_a_good_login_on_any_worker_clears_the_count(fake_exec: FakeExec) -> None:
    """As in one process: a bad password, then the right one, is no guessing."""
    clock = FakeClock(100.0)
    front = SourceGuard(_policy(), clock)
    pool = _pool(guard=front)
    await pool.start()
    try:
        (worker,) = fake_exec.started
        own = workers.FrontCountedGuard(_policy(), clock, report=worker.inbox.send)
        front.record_auth_failure(SOURCE)
        own.record_auth_failure(SOURCE)
        own.record_auth_success(SOURCE)
        own.record_auth_failure(SOURCE)
        await asyncio.sleep(0.1)  # the reports reach the front
        front.record_auth_failure(SOURCE)
        assert not front.is_banned(SOURCE)
        own.record_auth_failure(SOURCE)  # the third in a row
        await _until(lambda: front.is_banned(SOURCE))
    finally:
        await pool.stop(0)


async def test_a_burst_of_failed_logins_is_counted_whole_when_the_front_is_behind(
    fake_exec: FakeExec,
) -> None:
    """Reports wait in order, as the worker's stream messages on the same pair do, when the
    front has not read the pair for a while: they were dropped once it was full — exactly in
    a burst of guesses, the failures the front's guard is there to count."""
    clock = FakeClock(100.0)
    front = SourceGuard(_policy(), clock)
    pool = _pool(guard=front)
    await pool.start()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        (worker,) = fake_exec.started
        role = WorkerRole(1, udp, worker.inbox, ("127.0.0.1", 5060), {})
        own = workers.FrontCountedGuard(_policy(), clock, report=role.report_auth)
        worker.inbox.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:  # the front has not read for a while: the pair is full
                worker.inbox.send(b"w" * 1000)
        for _ in range(3):  # before the front reads again
            own.record_auth_failure(SOURCE)
        await _until(lambda: front.is_banned(SOURCE))
    finally:
        await pool.stop(0)
        udp.close()


async def test_a_flood_of_auth_reports_leaves_room_for_the_stream_replies() -> None:
    """Reports share the pair with the worker's messages for the front's TCP/TLS connections,
    which nothing sends again; while the front is behind, a flood of failed logins (an
    attacker's) must not fill the queue so that a reply to a carrier is dropped. Reports are
    counts: past their own bound they are the ones dropped."""
    worker_end, front_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    role = WorkerRole(1, udp, worker_end, ("127.0.0.1", 5060), {})
    try:
        with contextlib.suppress(BlockingIOError):
            while True:  # the front has not read for a while: the pair is full
                worker_end.send(b"w" * 1000)  # (WorkerRole made it non-blocking)
        report = workers.pack_auth_report(SOURCE, False)
        for _ in range(2 * role.to_front.limit):
            role.report_auth(report)
        assert 0 < role.to_front.dropped < 2 * role.to_front.limit  # some kept, then dropped
        reply = pack_stream_reply(3, b"SIP/2.0 200 OK\r\n\r\n")
        assert role.to_front.send(reply) is True
        assert role.to_front._waiting[-1] == reply
    finally:
        role.to_front.close()
        udp.close()
        worker_end.close()
        front_end.close()


def test_a_worker_reports_no_allowlisted_source() -> None:
    sent: list[bytes] = []
    own = workers.FrontCountedGuard(
        _policy(allowlist=frozenset({"192.0.2.0/24"})), FakeClock(0.0), report=sent.append
    )
    own.record_auth_failure("192.0.2.7")
    own.record_auth_success("192.0.2.7")
    assert sent == []
    own.record_auth_failure(SOURCE)
    own.record_auth_success(SOURCE)
    assert [workers.unpack_auth_report(m) for m in sent] == [(SOURCE, False), (SOURCE, True)]


async def test_a_worker_applies_the_bans_the_front_sends() -> None:
    own = workers.FrontCountedGuard(_policy(), FakeClock(100.0), report=lambda _: None)
    front, worker_end = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=worker_end)
    stop = asyncio.Event()
    commands = workers.worker_commands(own, trunk_removed=lambda _: None)
    control = asyncio.create_task(
        workers._serve_control(reader, writer, Metrics().render, commands, stop)
    )
    try:
        front.sendall(f"ban {SOURCE} 30.000\n".encode())
        await _until(lambda: own.is_banned(SOURCE))
        ((ip, remaining),) = own.banned()
        assert ip == SOURCE and remaining == pytest.approx(30)
    finally:
        front.close()
        await control
        writer.close()


# ---------------------------------------------------------------- a worker's messages not sent


def _bye_to(port: int, call_id: str) -> bytes:
    """A worker's BYE in a dialog over TCP whose remote target is 127.0.0.1:``port``."""
    return (
        f"BYE sip:alice@127.0.0.1:{port};transport=tcp SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK-w1bye\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:bob@127.0.0.1>;tag=w1\r\n"
        f"To: <sip:alice@127.0.0.1>;tag=c1\r\nCall-ID: {call_id}\r\nCSeq: 2 BYE\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _reports(sock: socket.socket) -> list[bytes]:
    """The messages the front could not send that it reported on a worker's inbox."""
    found: list[bytes] = []
    while True:
        try:
            message = unpack(sock.recv(70_000))
        except BlockingIOError:
            return found
        if message.is_unsent:
            found.append(message.data)


async def test_a_workers_message_the_front_cannot_send_is_reported_to_that_worker(
    fake_exec: FakeExec,
) -> None:
    """RFC 3261 §17.1.4 across processes: a worker's BYE whose connection the carrier closed,
    to a next hop that refuses a new connection, is lost — and the front tells the worker that
    sent it, whose transaction then ends at once; it waited Timer F (32 s) for an answer that
    could not come, the front having told only its own core (where no such transaction is)."""
    front = SipServer(UserAgentCore(UaConfig(), FakeClock(0.0)), lambda event: None)
    pool = workers.WorkerPool(
        _settings(sip_workers=2),
        -1,
        ("127.0.0.1", 5060),
        {},
        [b"k"] * 2,
        on_stream_reply=front.write_stream,  # as cli/serve.py wires it
    )
    with socket.socket() as refusing:  # bound, not listening: a connection to it is refused
        refusing.bind(("127.0.0.1", 0))
        bye = _bye_to(refusing.getsockname()[1], "gone-1@127.0.0.1")
        await pool.start()
        try:
            (worker,) = fake_exec.started
            worker.inbox.setblocking(False)
            worker.inbox.send(pack_stream_reply(4242, bye))  # its connection is gone
            reported: list[bytes] = []

            def told() -> bool:
                reported.extend(_reports(worker.inbox))
                return bool(reported)

            await _until(told)
            await asyncio.sleep(0.05)  # a second report would have come by now
            assert reported + _reports(worker.inbox) == [bye]
            assert front.core.counters["stream_reconnect_failed"] == 1
            assert front.core.counters["client_tx_transport_errors"] == 0  # not the front's
        finally:
            await pool.stop(0)
            await front.stop()
