"""Prometheus metrics of one gateway process, served at ``GET /metrics``.

Every metric lives in a ``CollectorRegistry`` owned by a ``Metrics`` instance, never in
prometheus_client's global registry, so each test (and each embedded gateway) gets a fresh set.
Labels have small fixed vocabularies (disconnect reasons, SIP methods, status codes, rejection
reasons): never phone numbers, URIs or trunk ids.

This module imports nothing from Telepath, so any layer may record into it.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

M = TypeVar("M", Counter, Gauge, Histogram)

CONTENT_TYPE = CONTENT_TYPE_LATEST

SETUP_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# Per-packet time inside the gateway: 10 µs .. 50 ms.
GATEWAY_LATENCY_BUCKETS_S = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
)
PACKET_LOSS_BUCKETS_PERCENT = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0)
JITTER_BUCKETS_MS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0, 100.0, 200.0, 500.0)
# A collection's pause: 0.5 ms (young objects) .. 1 s (a full collection of a large heap).
GC_PAUSE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# The RTP goal is send jitter p99 <= 2 ms: fine buckets below it, coarse ones for stalls.
# how long SIP datagrams waited before being read: ~1 ms normally, 50+ ms when saturated
SIP_RECEIVE_WAIT_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
TICK_LATENESS_BUCKETS_S = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
# How many ended call ids are remembered so that a repeated "ended" is not counted twice.
ENDED_MEMORY = 10_000


def label_cache(metric: M) -> Callable[[str], M]:
    """``metric.labels(value)`` of a one-label metric, memoised. Only for values from a bounded
    set (methods already folded to OTHER, status codes, outcomes): every value stays."""
    children: dict[str, M] = {}

    def child(value: str) -> M:
        found = children.get(value)
        if found is None:
            found = children[value] = metric.labels(value)
        return found

    return child


class Metrics:
    """The gateway's metrics, registered in a registry of their own.

    Call control (or ``DbCallRecorder``, given this object) reports call starts and ends with
    ``record_call_started``/``record_call_ended``; the SIP and media layers use the counters and
    histograms directly, e.g. ``metrics.sip_requests.labels(method="INVITE").inc()``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.active_calls = Gauge(
            "telepath_active_calls", "Calls in progress (started, not yet ended)", registry=r
        )
        self.calls = Counter(
            "telepath_calls",
            "Ended calls by outcome (the disconnect reason)",
            ["outcome"],
            registry=r,
        )
        self.call_setup = Histogram(
            "telepath_call_setup_seconds",
            "INVITE received to 200 OK sent",
            buckets=SETUP_BUCKETS_S,
            registry=r,
        )
        self.gateway_latency = Histogram(
            "telepath_gateway_latency_seconds",
            "Time one audio packet spends inside the gateway",
            ["direction"],  # caller_to_agent | agent_to_caller
            buckets=GATEWAY_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.rtp_packet_loss = Histogram(
            "telepath_rtp_packet_loss_percent",
            "Per-call RTP packet loss from the caller, percent",
            buckets=PACKET_LOSS_BUCKETS_PERCENT,
            registry=r,
        )
        self.rtp_jitter = Histogram(
            "telepath_rtp_jitter_ms",
            "Per-call mean of the RFC 3550 interarrival jitter, milliseconds",
            buckets=JITTER_BUCKETS_MS,
            registry=r,
        )
        self.rtp_dropped = Counter(
            "telepath_rtp_packets_dropped",
            "RTP/RTCP datagrams a call's media socket dropped, by reason, counted as the call "
            "ends: rejected_source (not from the caller's media address: spoofing, RTP bleed "
            "probes), unauthenticated (failed SRTP authentication or replay), malformed",
            ["reason"],
            registry=r,
        )
        self.rtp_send_errors = Counter(
            "telepath_rtp_send_errors",
            "RTP/RTCP datagrams of ours a call's media socket refused to send (an address of "
            "the other IP family, a network error), counted as the call ends: audio the caller "
            "never got",
            registry=r,
        )
        self.media_warnings = Counter(
            "telepath_call_media_warnings",
            "Ended calls whose media report warned, by warning code (no_inbound_rtp, "
            "private_address_advertised, srtp_authentication_failed, media_send_failed, "
            "rtp_from_unexpected_address, caller_behind_nat, caller_hears_nothing): alert on "
            "the rate of one-way-audio calls",
            ["code"],
            registry=r,
        )
        self.agent_reconnects = Counter(
            "telepath_agent_reconnects",
            "Custom agents' dropped connections replaced mid-call (custom_reconnect), counted as "
            "each call ends; a drop not replaced in time ends the call (ai_provider_error)",
            registry=r,
        )
        self.sip_auth_failures = Counter(
            "telepath_sip_auth_failures",
            "SIP digest authentication failures by reason",
            ["reason"],
            registry=r,
        )
        self.sip_requests = Counter(
            "telepath_sip_requests", "SIP requests received by method", ["method"], registry=r
        )
        self.sip_responses = Counter(
            "telepath_sip_responses", "SIP responses sent by status code", ["status"], registry=r
        )
        # labels() takes a lock and builds tuples on every call (~3 µs); these are called ~13
        # times per call on the event loop, with label values from small fixed sets
        self.sip_request_by = label_cache(self.sip_requests)
        self.sip_response_by = label_cache(self.sip_responses)
        self.calls_by = label_cache(self.calls)
        self.gateway_latency_by = label_cache(self.gateway_latency)
        self.calls_rejected = Counter(
            "telepath_calls_rejected",
            "INVITEs rejected before a call was set up, by reason",
            ["reason"],
            registry=r,
        )
        self.call_record_failures = Counter(
            "telepath_call_record_failures",
            "Call record writes that failed (the call itself went on)",
            ["operation"],
            registry=r,
        )
        self.db_writes_parked = Gauge(
            "telepath_db_writes_parked",
            "Call record and webhook event writes kept for retry after a transient database "
            "failure (the database unreachable, restarting or locked)",
            ["writer"],
            registry=r,
        )
        self.webhook_backlog = Gauge(
            "telepath_webhook_backlog", "Webhook deliveries pending in the outbox", registry=r
        )
        self.webhook_deliveries = Counter(
            "telepath_webhook_deliveries",
            "Webhook delivery attempts by result (delivered, retry, failed)",
            ["result"],
            registry=r,
        )
        self.webhook_enqueue_failures = Counter(
            "telepath_webhook_enqueue_failures",
            "Events that could not be written to the webhook outbox",
            registry=r,
        )
        self.gc_pause = Histogram(
            "telepath_gc_pause_seconds",
            "How long each garbage collection stopped the process, by generation (2: a full "
            "collection, which every live call's audio waits for)",
            ["generation"],
            buckets=GC_PAUSE_BUCKETS_S,
            registry=r,
        )
        self.media_tick_lateness = Histogram(
            "telepath_media_tick_lateness_seconds",
            "How late the media clock woke for each 5 ms slot of streams: every RTP packet "
            "of that slot leaves this much late (the gateway's share of send jitter)",
            buckets=TICK_LATENESS_BUCKETS_S,
            registry=r,
        )
        self.sip_receive_wait = Histogram(
            "telepath_sip_receive_wait_seconds",
            "How long each SIP datagram (UDP) waited between arriving and being read: "
            "queueing in the gateway, the first sign of a saturated one",
            buckets=SIP_RECEIVE_WAIT_BUCKETS_S,
            registry=r,
        )
        self.loop_busy = Gauge(
            "telepath_event_loop_busy_ratio",
            "Share of the last quarter second the event-loop thread was on a CPU or waiting "
            "for one (1: saturated)",
            registry=r,
        )
        self.admission_limit = Gauge(
            "telepath_sip_admission_limit_cps",
            "New call attempts per second admitted while the event loop is saturated "
            "(TELEPATH_SIP_MAX_LOOP_LOAD; 0: no limit in force)",
            registry=r,
        )
        self.sip_workers_up = Gauge(
            "telepath_sip_workers_up",
            "SIP worker processes serving calls besides the first (TELEPATH_SIP_WORKERS - 1 "
            "when all are up)",
            registry=r,
        )
        self.sip_worker_restarts = Counter(
            "telepath_sip_worker_restarts",
            "SIP worker processes that exited unexpectedly and were started again",
            registry=r,
        )
        self.sip_forward_dropped = Counter(
            "telepath_sip_forward_dropped",
            "SIP datagrams not handed to the worker owning their call (its queue full, or it "
            "was restarting); the sender retransmits",
            registry=r,
        )
        self._active: set[str] = set()
        self._ended: OrderedDict[str, None] = OrderedDict()

    def watch_gc(self) -> Callable[[], None]:
        """Time every garbage collection into ``gc_pause``; returns the function that stops it.

        One ``gc.callbacks`` entry per call: a server process calls this once.
        """
        children = [self.gc_pause.labels(generation=str(g)) for g in range(3)]
        started = [0.0]

        def timed(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                children[info["generation"]].observe(time.perf_counter() - started[0])

        gc.callbacks.append(timed)

        def unwatch() -> None:
            with contextlib.suppress(ValueError):
                gc.callbacks.remove(timed)

        return unwatch

    def record_call_started(self, call_id: str) -> None:
        """Count a call as active (idempotent per call id)."""
        if call_id in self._ended:
            return
        self._active.add(call_id)
        self.active_calls.set(len(self._active))

    def record_call_ended(
        self,
        call_id: str,
        *,
        outcome: str,
        setup_ms: float | None = None,
        packet_loss_percent: float | None = None,
        jitter_ms: float | None = None,
    ) -> None:
        """Count an ended call and observe its per-call measurements (once per call id)."""
        self._active.discard(call_id)
        self.active_calls.set(len(self._active))
        if call_id in self._ended:
            return
        self._ended[call_id] = None
        if len(self._ended) > ENDED_MEMORY:
            self._ended.popitem(last=False)
        self.calls_by(outcome).inc()
        if setup_ms is not None:
            self.call_setup.observe(setup_ms / 1000.0)
        if packet_loss_percent is not None:
            self.rtp_packet_loss.observe(packet_loss_percent)
        if jitter_ms is not None:
            self.rtp_jitter.observe(jitter_ms)

    def record_rtp_dropped(self, **by_reason: int) -> None:
        """Add one ended call's dropped media datagrams (``rejected_source=3, ...``)."""
        for reason, count in by_reason.items():
            if count:
                self.rtp_dropped.labels(reason=reason).inc(count)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


# Gauges of one process's state that do not add up across SIP workers: the busiest one is shown.
_MERGED_BY_MAX = frozenset({"telepath_event_loop_busy_ratio"})


class _Merged(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merge_expositions(texts: Sequence[bytes]) -> bytes:
    """One exposition for several processes' (SIP workers') metrics of the same names.

    Samples with the same name and labels are added — counts, histogram buckets, active calls,
    admission limits — except ``*_created`` (the earliest) and the gauges in ``_MERGED_BY_MAX``
    (the largest: a worker's own load). The first text's families and order are kept.
    """
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text.decode()):
            if family.name not in families:
                families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[family.name] = {}
            merged = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in merged:
                    merged[key] = sample.value
                elif sample.name.endswith("_created"):
                    merged[key] = min(merged[key], sample.value)
                elif family.name in _MERGED_BY_MAX:
                    merged[key] = max(merged[key], sample.value)
                else:
                    merged[key] += sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(families.values())))
    return generate_latest(registry)


# What only ever grows while its process lives: counts, histogram buckets, counts and sums.
_MONOTONIC_TYPES = frozenset({"counter", "histogram", "summary"})


def monotonic_part(text: bytes) -> bytes:
    """The counters and histograms of an exposition, without its gauges.

    A SIP worker that is started again counts from 0: the front adds its earlier processes'
    last counts to the new one's (``cli/workers.py``), else the merged counters would fall, which
    Prometheus takes for a reset (``increase()`` would then count the whole total again). Gauges
    are not carried over: a dead process's active calls, backlog and load are 0.
    """
    families = [
        family
        for family in text_string_to_metric_families(text.decode())
        if family.type in _MONOTONIC_TYPES
    ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(families))
    return generate_latest(registry)
