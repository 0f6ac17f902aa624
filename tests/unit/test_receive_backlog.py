"""The SIP receive backlog: overload is datagrams that keep waiting, not one late burst."""

from __future__ import annotations

import socket
import time

from telepath.transport.receive_backlog import BacklogMonitor, KernelReceiveTime


def test_one_burst_after_a_stall_is_not_overload() -> None:
    # A 400 ms stall (a VM pause, a full collection): everything queued in it is read within a
    # few milliseconds afterwards, each having waited long. That is not a saturated gateway.
    monitor = BacklogMonitor(threshold_s=0.05, hold_s=0.25)
    for i in range(200):
        monitor.sample(waited_s=0.4 - i * 0.001, now=100.0 + i * 0.00002)
    assert not monitor.overloaded
    monitor.sample(waited_s=0.0005, now=100.01)
    assert not monitor.overloaded


def test_datagrams_that_keep_waiting_are_overload_until_the_queue_drains() -> None:
    monitor = BacklogMonitor(threshold_s=0.05, hold_s=0.25)
    now = 100.0
    for _ in range(30):  # 300 ms of reads, every datagram 80-120 ms old
        monitor.sample(waited_s=0.1, now=now)
        now += 0.01
    assert monitor.overloaded
    monitor.sample(waited_s=0.04, now=now)  # below the threshold, above half: still shedding
    assert monitor.overloaded
    monitor.sample(waited_s=0.02, now=now + 0.001)  # drained: admit again at once
    assert not monitor.overloaded
    monitor.sample(waited_s=0.1, now=now + 0.002)  # waiting again must last the hold anew
    assert not monitor.overloaded
    monitor.sample(waited_s=0.1, now=now + 0.26)
    assert monitor.overloaded


def test_a_gap_below_the_threshold_restarts_the_hold() -> None:
    monitor = BacklogMonitor(threshold_s=0.05, hold_s=0.25)
    monitor.sample(waited_s=0.1, now=10.0)
    monitor.sample(waited_s=0.001, now=10.2)
    monitor.sample(waited_s=0.1, now=10.3)
    monitor.sample(waited_s=0.1, now=10.4)  # over for 0.1 s since the gap, not 0.4 s
    assert not monitor.overloaded


def test_kernel_receive_time_measures_how_long_a_datagram_waited() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        rx.bind(("127.0.0.1", 0))
        stamp = KernelReceiveTime(rx.fileno())  # nothing read yet: ENOENT, still available
        assert stamp.available  # Linux: the gateway's platform
        # The first request turns the kernel's stamping on, a moment later (a deferred static
        # key): until then a datagram reads as stamped when asked, i.e. as not having waited.
        for _ in range(100):
            tx.sendto(b"warm-up", rx.getsockname())
            time.sleep(0.01)
            rx.recv(100)
            if stamp.waited_s() >= 0.005:
                break
        tx.sendto(b"waits", rx.getsockname())
        time.sleep(0.12)
        rx.recv(100)
        waited = stamp.waited_s()
        assert 0.1 <= waited < 1.0, waited
        tx.sendto(b"at once", rx.getsockname())
        rx.recv(100)
        assert stamp.waited_s() < 0.05
