"""``WebhookDispatcher``: delivers the outbox with signatures, retries and backoff.

Due rows are claimed (leased, see ``telepath.db.webhook_store``) as request slots free up, at
most ``endpoint_concurrency`` per endpoint and ``account_concurrency`` per account (half the
slots by default, while other accounts need them), POSTed at once, and each outcome is stored
with the next claim: a 2xx answer means delivered; anything else (another
status, a timeout, a refused connection, a redirect) schedules a retry after
``backoff_base_s * 2**(attempts - 1)`` (capped at ``backoff_max_s``) until ``max_attempts``
attempts were made, when the row is marked ``failed``. Rows live in the database, so a restarted
gateway resumes where the previous one stopped.

The HTTP client is aiohttp, not httpx (which only the API's provider-key checks still use):
the dispatcher runs on the event loop that carries the calls' media, and a call's
events cost more CPU to deliver than the call took to set up. A POST with keep-alive cost
0.67-0.77 ms of CPU with httpx and 0.06 ms with aiohttp (C HTTP parser), same receiver, same
concurrency (measured 2026-12-06, ``bench webhooks``' receiver). TLS trust is the agents'
(``bridges/tls.py``: the system's CAs, ``SSL_CERT_FILE``); ``HTTPS_PROXY`` and friends are
honoured, as httpx did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yarl
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telepath import __version__
from telepath.bridges.http_client import new_session
from telepath.config import Settings
from telepath.db.base import utcnow
from telepath.db.models import webhook_secret_context
from telepath.db.webhook_store import (
    DELIVERED,
    FAILED,
    PENDING,
    Claimed,
    Outcome,
    WebhookRepository,
)
from telepath.log import Streak
from telepath.metrics import Metrics
from telepath.secrets.keyring import Keyring, SecretDecryptionError
from telepath.webhooks.events import iso_ms
from telepath.webhooks.signing import (
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    signature_header,
)

logger = logging.getLogger(__name__)

ERROR_MAX_CHARS = 200
# of a receiver's answer, read (and ignored) to keep the connection for the next delivery
MAX_ANSWER_BYTES = 64 * 1024
ANSWER_READ_S = 1.0
RELEASE_S = 5.0  # at a stop: the longest the leases of cut-off deliveries are waited on
SECRET_HOLD_S = 60.0  # a delivery whose signing secret cannot be decrypted: looked at again
BACKLOG_EVERY_S = 5.0  # while deliveries go on: how often the backlog gauge is read again
UNDECRYPTABLE = "signing secret cannot be decrypted with the current master key"
RESULTS = {DELIVERED: "delivered", FAILED: "failed", PENDING: "retry"}  # the metric's label


def event_body(claimed: Claimed) -> bytes:
    """The exact bytes POSTed (and signed) for a delivery; identical on every retry."""
    envelope = {
        "id": claimed.event_id,
        "type": claimed.event,
        "created_at": iso_ms(claimed.created_at),
        "data": claimed.payload,
    }
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def transport_error(exc: BaseException) -> str:
    """``last_error`` of a delivery that got no answer: a short, documented word, not the
    client library's class name (docs/webhooks.md)."""
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return "tls_error"  # untrusted or mismatched certificate, failed handshake
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connection_failed"  # refused, unreachable, name not resolved
    if isinstance(exc, aiohttp.InvalidURL | ValueError):
        return "invalid_url"
    return "connection_error"  # closed or reset before the answer


def backoff_delay(attempts: int, base_s: float, max_s: float) -> float:
    """Seconds to wait after ``attempts`` failed attempts: ``base_s * 2**(attempts-1)``, capped."""
    return float(min(base_s * (2 ** max(0, attempts - 1)), max_s))


def connect_url(url: str) -> yarl.URL:
    """``url`` as registered (not re-quoted), with a non-ASCII host in the IDNA form it was
    validated in (``api/url_hosts.py``: Python's ``idna`` codec, as ``websockets`` converts an
    agent's ``custom_endpoint``): the name looked up, sent in ``Host`` and as the TLS server name
    (RFC 5891 §4, RFC 6066 §3). Found by review: an encoded URL's host is taken as is, and every
    delivery to ``https://bücher.example/`` failed though the URL was taken."""
    target = yarl.URL(url, encoded=True)
    host = target.raw_host
    if host is not None and not host.isascii():
        target = target.with_host(host.encode("idna").decode("ascii"))
    return target


class WebhookDispatcher:
    """Polls the outbox and delivers it.

    Args:
        sessions: the session factory.
        keyring: decrypts endpoint signing secrets.
        metrics: optional; ``telepath_webhook_backlog`` and ``..._deliveries_total`` go here.
        session: an ``aiohttp.ClientSession`` to send with (closed by ``aclose`` only if
            created here, on the first delivery).
        timeout_s: per-request timeout (the documented limit is 30 s).
        max_attempts: attempts before a delivery is marked ``failed``.
        backoff_base_s: delay after the first failure; doubles after each further failure.
        backoff_max_s: the longest delay between attempts.
        poll_interval_s: how often the outbox is checked when nobody calls ``wake``.
        concurrency: requests in flight at once.
        endpoint_concurrency: requests in flight at once to one endpoint, so that one that
            answers slowly or never cannot take every slot.
        account_concurrency: requests in flight at once to one account's endpoints (default
            half of ``concurrency``, at least 1) while another account has deliveries due or
            in flight, so that an account with several endpoints that answer slowly or never
            cannot take every slot either; alone, an account may use the free slots too.
        stop_grace_s: at a stop, how long the deliveries in flight may still take (default
            ``timeout_s``: each ends within it anyway); those cut off after it are due again
            at once.
        now: the wall clock (UTC, aware), replaceable in tests.
        allow_insecure: ``http://`` endpoints are sent to (TELEPATH_ALLOW_INSECURE_WEBHOOK_URLS,
            as it is at delivery, not as it was when the endpoint was saved); else a delivery
            to one is an attempt that failed, ``insecure_url``, with no request.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        *,
        metrics: Metrics | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 30.0,
        max_attempts: int = 8,
        backoff_base_s: float = 30.0,
        backoff_max_s: float = 6 * 3600.0,
        poll_interval_s: float = 1.0,
        concurrency: int = 16,
        endpoint_concurrency: int = 4,
        account_concurrency: int | None = None,
        stop_grace_s: float | None = None,
        now: Callable[[], datetime] = utcnow,
        allow_insecure: bool = False,
    ) -> None:
        self._sessions = sessions
        self._allow_insecure = allow_insecure
        self._insecure_warned: set[str] = set()  # endpoints whose http:// URL was refused
        self._keyring = keyring
        self._metrics = metrics
        self._own_session = session is None
        self._session = session
        self._concurrency = concurrency
        self._endpoint_concurrency = endpoint_concurrency
        self._account_concurrency = (
            max(1, concurrency // 2) if account_concurrency is None else account_concurrency
        )
        self._secrets_unreadable = False  # said once, until a secret decrypts again
        self._unstored: list[Outcome] = []  # outcomes a database error kept from being stored
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._poll_interval_s = poll_interval_s
        self.stop_grace_s = timeout_s if stop_grace_s is None else stop_grace_s
        self._now = now
        self._wakeup = asyncio.Event()
        self._next_due: datetime | None = None  # the earliest pending delivery's due time
        self._claimed_at: datetime | None = None  # the last claim's clock
        self._backlog_read_at: float | None = None  # the loop's clock when the gauge was set

    @classmethod
    def from_settings(
        cls,
        sessions: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
    ) -> WebhookDispatcher:
        """A dispatcher configured by ``TELEPATH_WEBHOOK_*``."""
        return cls(
            sessions,
            keyring,
            metrics=metrics,
            timeout_s=settings.webhook_timeout_s,
            max_attempts=settings.webhook_max_attempts,
            backoff_base_s=settings.webhook_backoff_base_s,
            poll_interval_s=settings.webhook_poll_s,
            allow_insecure=settings.allow_insecure_webhook_urls,
        )

    def wake(self) -> None:
        """Check the outbox now rather than at the next poll (pass to ``DbEventSink``)."""
        self._wakeup.set()

    def backoff(self, attempts: int) -> timedelta:
        """The delay before the next attempt after ``attempts`` failed ones."""
        return timedelta(seconds=backoff_delay(attempts, self._backoff_base_s, self._backoff_max_s))

    async def run(self, stop_event: asyncio.Event) -> None:
        """Deliver until ``stop_event`` is set; errors are logged and the loop goes on."""
        failures = Streak(logger, "webhook dispatch")  # a database outage: said once
        while not stop_event.is_set():
            self._wakeup.clear()
            try:
                await self.run_once(stop_event)
            except Exception as exc:
                failures.failed(exc)
            else:
                failures.worked()
            stop_wait = asyncio.ensure_future(stop_event.wait())
            wake_wait = asyncio.ensure_future(self._wakeup.wait())
            try:
                await asyncio.wait(
                    {stop_wait, wake_wait},
                    timeout=self.idle_wait_s(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                for task in (stop_wait, wake_wait):
                    task.cancel()
                await asyncio.gather(stop_wait, wake_wait, return_exceptions=True)

    async def run_once(self, stop_event: asyncio.Event | None = None) -> int:
        """Attempt every due delivery; return how many were attempted.

        A rolling pipeline, not rounds: only as many deliveries are claimed as can be sent at
        once (``concurrency`` in flight, ``endpoint_concurrency`` of them per endpoint and
        ``account_concurrency`` per account), and whenever some finish their outcomes are
        stored and more are claimed, in one transaction. An endpoint that answers slowly or
        never (until ``timeout_s``) takes its share of the slots and no more, and an account's
        endpoints together their account's share while other accounts need slots; the rest go
        on. Since a claimed delivery is
        sent at once, its lease (``2 * timeout_s + 30`` s) covers its send (at most
        ``timeout_s``) and the storing of its outcome. Returns when nothing is in flight and
        nothing more could be claimed.

        Once ``stop_event`` is set nothing more is claimed, and the deliveries in flight get
        ``stop_grace_s`` to finish and have their outcomes stored: one cut off would stay
        leased, and be sent again after a restart though the receiver may have processed it.
        Those still in flight after it (or when this is cancelled) are cancelled and their
        leases released (:meth:`_release`).
        """
        loop = asyncio.get_running_loop()
        total = 0
        cutoff: float | None = None  # once stopping: when the deliveries in flight are cut off
        in_flight: dict[asyncio.Task[Outcome], Claimed] = {}
        # outcomes not stored yet: a database error kept them (from this round or the last)
        finished, self._unstored = self._unstored, []
        try:
            while True:
                if cutoff is None and stop_event is not None and stop_event.is_set():
                    cutoff = loop.time() + self.stop_grace_s
                free = 0 if cutoff is not None else self._concurrency - len(in_flight)
                claimed: list[Claimed] = []
                if free > 0 or finished:
                    try:
                        claimed = await self._exchange(finished, free, in_flight.values())
                    except Exception:
                        # A database error (a failover, a lock timeout): the requests in flight
                        # finish (each within timeout_s) rather than being cut, and every
                        # outcome is kept for the next exchange — their rows stay leased, and
                        # an outcome stored late is still the claim's (the lease checks it).
                        done = await asyncio.gather(*in_flight, return_exceptions=True)
                        in_flight.clear()
                        self._unstored = [
                            *finished,
                            *(o for o in done if isinstance(o, Outcome)),
                        ]
                        raise
                    finished = []
                for c in claimed:
                    task = asyncio.ensure_future(self._attempt(c))
                    in_flight[task] = c
                total += len(claimed)
                if not in_flight:
                    return total
                ended = await self._until_next(in_flight, stop_event, cutoff)
                if not ended and cutoff is not None and loop.time() >= cutoff:
                    return total  # the grace is over: the rest are cut off below
                for task in ended:
                    del in_flight[task]
                    finished.append(task.result())
        finally:
            for task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
                await self._release(list(in_flight.values()))

    async def _until_next(
        self,
        in_flight: dict[asyncio.Task[Outcome], Claimed],
        stop_event: asyncio.Event | None,
        cutoff: float | None,
    ) -> set[asyncio.Task[Outcome]]:
        """Wait until a delivery in flight ends — or a stop (the grace then starts at once),
        or, with a slot free, until a wake (an event written) or the poll interval:
        deliveries held by a slow endpoint must not hold up the claim of new ones for the
        free slots. Stopping (``cutoff`` set), only until ``cutoff``. Returns the deliveries
        ended."""
        if cutoff is not None:
            timeout = max(0.0, cutoff - asyncio.get_running_loop().time())
            done, _ = await asyncio.wait(
                in_flight, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            return done
        signals: list[asyncio.Future[Any]] = []
        if stop_event is not None:
            signals.append(asyncio.ensure_future(stop_event.wait()))
        slot_free = len(in_flight) < self._concurrency
        if slot_free:
            signals.append(asyncio.ensure_future(self._wakeup.wait()))
        try:
            ready, _ = await asyncio.wait(
                {*in_flight, *signals},
                timeout=self._poll_interval_s if slot_free else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for signal in signals:
                signal.cancel()
            await asyncio.gather(*signals, return_exceptions=True)
        if slot_free:
            self._wakeup.clear()
        return {task for task in in_flight if task in ready}

    async def _release(self, cut: Sequence[Claimed]) -> None:
        """Make deliveries cut off mid-request due again at once, rather than when their lease
        runs out (``2 * timeout_s + 30`` s after the claim): the next start, or another
        instance, sends them again without waiting — at least once, as the receiver may have
        processed them. Not counted as attempts (their outcome is unknown). Best effort: an
        error leaves the leases to run out."""
        try:
            async with asyncio.timeout(RELEASE_S):
                async with self._sessions() as session:
                    await WebhookRepository(session).release(cut, self._now())
                    await session.commit()
        except Exception as exc:
            logger.warning(
                "%d webhook delivery lease(s) not released (%s): retried when they run out",
                len(cut),
                type(exc).__name__,
            )

    async def _exchange(
        self, finished: Sequence[Outcome], free: int, in_flight: Iterable[Claimed]
    ) -> list[Claimed]:
        """Store ``finished`` outcomes and claim up to ``free`` due deliveries, in one
        transaction. Until then the outcomes' rows stay leased; a crash before it re-sends
        them, which the idempotency id lets the receiver recognise."""
        now = self._claimed_at = self._now()
        lease = timedelta(seconds=self._timeout_s * 2 + 30)
        flying = list(in_flight)
        busy = Counter(c.endpoint_id for c in flying)
        async with self._sessions() as session:
            repo = WebhookRepository(session)
            await repo.record_attempts(finished)
            claimed: list[Claimed] = []
            if free > 0:
                claimed = await repo.claim_due(
                    now,
                    limit=free,
                    lease=lease,
                    per_endpoint=self._endpoint_concurrency,
                    busy=busy,
                    per_account=self._account_concurrency,
                    account_busy=Counter(c.account_id for c in flying),
                )
            if not claimed and not busy:
                await self._look_ahead(repo)  # idle after this: the gauge, when to look again
            elif self._backlog_stale():
                await self._read_backlog(repo)  # busy: the gauge is not left at its idle value
            await session.commit()
        self._count(finished)
        return claimed

    def idle_wait_s(self) -> float:
        """How long :meth:`run` waits after a round unless woken: until the earliest pending
        delivery is due (a retry's back-off, an expired lease), at most the poll interval, which
        is then only for rows another process wrote without waking this one."""
        due = self._next_due
        if due is None or (self._claimed_at is not None and due <= self._claimed_at):
            # none pending, or one was due at the last claim and not taken: another process
            # holds it (PostgreSQL's SKIP LOCKED) — the poll, not a busy loop
            return self._poll_interval_s
        due_in = (due - self._now()).total_seconds()
        return min(self._poll_interval_s, max(0.0, due_in))

    async def _look_ahead(self, repo: WebhookRepository) -> None:
        """After the last claim of a round: the backlog gauge, and when to look again."""
        backlog, self._next_due = await repo.pending()
        self._set_backlog(backlog)

    def _backlog_stale(self) -> bool:
        """Whether the gauge is to be read again while deliveries go on: at the first claim
        (after a start with a backlog it read 0), then every ``BACKLOG_EVERY_S`` (one COUNT on
        the indexed status, not one per exchange)."""
        if self._metrics is None:
            return False
        read_at = self._backlog_read_at
        now = asyncio.get_running_loop().time()
        return read_at is None or now - read_at >= BACKLOG_EVERY_S

    async def _read_backlog(self, repo: WebhookRepository) -> None:
        self._set_backlog(await repo.pending_count())

    def _set_backlog(self, backlog: int) -> None:
        """``telepath_webhook_backlog``: deliveries neither delivered nor given up, those in
        flight (leased) included."""
        self._backlog_read_at = asyncio.get_running_loop().time()
        if self._metrics is not None:
            self._metrics.webhook_backlog.set(backlog)

    async def _attempt(self, claimed: Claimed) -> Outcome:
        try:
            secret = self._keyring.decrypt(
                claimed.secret_enc, webhook_secret_context(claimed.endpoint_id)
            )
        except SecretDecryptionError:
            return self._held(claimed)
        self._secrets_unreadable = False
        status_code, error = await self._send(claimed, secret)
        attempts = claimed.attempts + 1
        now = self._now()
        if status_code is not None and 200 <= status_code < 300:
            status, next_at = DELIVERED, now
        elif attempts >= self._max_attempts:
            status, next_at = FAILED, now
        else:
            status, next_at = PENDING, now + self.backoff(attempts)
        return Outcome(
            delivery_id=claimed.delivery_id,
            status=status,
            attempts=attempts,
            next_attempt_at=next_at,
            attempted_at=now,
            status_code=status_code,
            error=error,
            leased_until=claimed.leased_until,
        )

    def _count(self, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.held:
                continue  # not an attempt
            if self._metrics is not None:
                self._metrics.webhook_deliveries.labels(result=RESULTS[outcome.status]).inc()
            if outcome.status == FAILED:
                logger.warning(
                    "webhook delivery %s gave up after %d attempts",
                    outcome.delivery_id,
                    outcome.attempts,
                )

    def _held(self, claimed: Claimed) -> Outcome:
        """A delivery whose signing secret this process cannot decrypt — re-encrypted by
        ``telepath secrets rotate`` under a new ``TELEPATH_SECRET_KEY`` this gateway was not
        restarted with (the key file it follows by itself) — is not sent and not counted as an
        attempt (it would end ``failed`` without ever being sent): it is looked at again after
        ``SECRET_HOLD_S``. Said once until a secret can be decrypted again, not once per
        delivery."""
        if not self._secrets_unreadable:
            self._secrets_unreadable = True
            logger.error(
                "webhook signing secrets cannot be decrypted with the current master key "
                "(TELEPATH_SECRET_KEY rotated? restart with the new value): deliveries held back"
            )
        return Outcome(
            delivery_id=claimed.delivery_id,
            status=PENDING,
            attempts=claimed.attempts,
            next_attempt_at=self._now() + timedelta(seconds=SECRET_HOLD_S),
            attempted_at=None,  # not attempted
            status_code=None,
            error=UNDECRYPTABLE,
            leased_until=claimed.leased_until,
            held=True,
        )

    async def _send(self, claimed: Claimed, secret: str) -> tuple[int | None, str | None]:
        """POST one delivery; return (HTTP status or None, error summary or None)."""
        if not self._allow_insecure and urlsplit(claimed.url).scheme.lower() == "http":
            # The setting was checked only when the endpoint was saved: one saved while it was
            # on got signed call data in cleartext after it was turned off. Refused as an
            # endpoint that cannot be reached is: retried, then failed.
            if claimed.endpoint_id not in self._insecure_warned:
                self._insecure_warned.add(claimed.endpoint_id)
                logger.warning(  # not the URL: its path or query may hold a token
                    "webhook endpoint %s is http:// and TELEPATH_ALLOW_INSECURE_WEBHOOK_URLS is "
                    "off: its deliveries are not sent",
                    claimed.endpoint_id,
                )
            return None, "insecure_url"
        body = event_body(claimed)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"Telepath-Webhooks/{__version__}",
            SIGNATURE_HEADER: signature_header(secret, body),
            EVENT_ID_HEADER: claimed.event_id,
            EVENT_TYPE_HEADER: claimed.event,
            IDEMPOTENCY_HEADER: claimed.event_id,
        }
        try:
            # One deadline for the whole exchange, and at most MAX_ANSWER_BYTES or
            # ANSWER_READ_S of the answer read: a receiver cannot hold the dispatcher with a
            # slow or endless answer.
            async with asyncio.timeout(self._timeout_s):
                status_code = await self._post(claimed.url, body, headers)
        except TimeoutError:
            return None, "timeout"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return None, transport_error(exc)
        if 200 <= status_code < 300:
            return status_code, None
        return status_code, f"HTTP {status_code}"[:ERROR_MAX_CHARS]

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # the answer is read only to keep the connection: never decompressed
            self._session = new_session(self._concurrency, auto_decompress=False)
        return self._session

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        async with self._client().post(
            connect_url(url),
            data=body,
            headers=headers,
            allow_redirects=False,  # a redirect is an answer like any other: retried
        ) as response:
            # A short answer is read to its end: a response closed unread closes its
            # connection, and every delivery paid a new TCP (and TLS) handshake. A longer or
            # slower one is dropped with its connection.
            read = 0
            # the status stands whatever happens to the rest of the answer
            with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError):
                async with asyncio.timeout(ANSWER_READ_S):
                    async for chunk in response.content.iter_any():
                        read += len(chunk)
                        if read > MAX_ANSWER_BYTES:
                            response.close()  # not reusable: the rest is never read
                            break
            return response.status

    async def aclose(self) -> None:
        """Close the HTTP client if this dispatcher created it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
