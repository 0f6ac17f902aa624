"""Running SIPp for a benchmark step and reading its statistics files."""

from __future__ import annotations

import csv
import glob
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.interop.calls.harness import ACK_TXN, authenticated_call

from bench.common import free_port

SIPP = shutil.which("sipp") or "sipp"


def bench_scenario(user: str, media_port: int | str, hold_ms: int) -> str:
    """The interop harness's authenticated call, plus a branch that ACKs a 503 and ends.

    ``media_port`` may be a SIPp keyword such as ``[field0]`` (one phone port per call from an
    injection file). A 503 to either INVITE is counted on its own scenario line (clean
    shedding); anything else that goes wrong is a SIPp failure (timeout, unexpected message).
    """
    xml = authenticated_call(user, 47999, hold_ms=hold_ms)
    xml = xml.replace("m=audio 47999", f"m=audio {media_port}")
    # The second INVITE gets its own transaction name so its 503 can be ACKed.
    second = xml.index('<send retrans="500">\n    <![CDATA[\n      INVITE')
    xml = xml[:second] + '<send retrans="500" start_txn="inv2">' + xml[second + 20 :]
    xml = xml.replace(
        '  <recv response="100" optional="true" response_txn="inv1"/>\n',
        '  <recv response="100" optional="true" response_txn="inv1"/>\n'
        '  <recv response="503" optional="true" response_txn="inv1" next="shed1"/>\n',
    )
    xml = xml.replace(
        '  <recv response="100" optional="true"/>\n  <recv response="180" optional="true"/>\n',
        '  <recv response="100" optional="true" response_txn="inv2"/>\n'
        '  <recv response="503" optional="true" response_txn="inv2" next="shed2"/>\n'
        '  <recv response="180" optional="true" response_txn="inv2"/>\n',
    )
    xml = xml.replace(
        '<recv response="200" rrs="true" rtd="true"/>',
        '<recv response="200" rrs="true" rtd="true" response_txn="inv2"/>',
    )
    common = {"user": user, "media_port": 0, "formats": ""}
    shed = (
        '  <recv response="200" next="done"/>\n'
        '  <label id="shed1"/>\n'
        + (ACK_TXN % {**common, "txn": "inv1", "cseq": 1}).replace("<send ", '<send next="done" ')
        + '  <label id="shed2"/>\n'
        + ACK_TXN % {**common, "txn": "inv2", "cseq": 2}
        + '  <label id="done"/>\n'
    )
    head, tail = xml.rsplit('  <recv response="200"/>\n', 1)
    return head + shed + tail


@dataclass
class SippRun:
    """What one SIPp run reports."""

    attempted: int
    stats: dict[str, str]
    counts: dict[str, int]
    wall_s: float
    returncode: int
    errors: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    series: list[dict[str, str]] = field(default_factory=list)  # every statistics row, in order

    def stat(self, name: str) -> int:
        try:
            return int(self.stats.get(f"{name}(C)", "0") or 0)
        except ValueError:
            return 0

    @property
    def successful(self) -> int:
        return self.stat("SuccessfulCall")

    @property
    def failed(self) -> int:
        return self.stat("FailedCall")

    @property
    def timeouts(self) -> int:
        return (
            self.stat("FailedMaxUDPRetrans")
            + self.stat("FailedTimeoutOnRecv")
            + self.stat("FailedCallTimeout")
            + self.stat("FailedTimeoutOnSend")
        )

    @property
    def shed_503(self) -> int:
        return sum(v for k, v in self.counts.items() if "_503_" in k and k.endswith("_Recv"))

    @property
    def crashed(self) -> bool:
        """SIPp itself died (seen: SIGABRT at 400 calls/s with auth on this VM); its periodic
        statistics stop at the crash, so the step says nothing about the server."""
        return self.returncode < 0 and self.returncode != -signal.SIGKILL  # SIGKILL: our timeout

    @property
    def completed(self) -> int:
        """Calls that went all the way (BYE answered), i.e. successful and not shed."""
        return self.successful - self.shed_503

    @property
    def invite_rate(self) -> float | None:
        """Calls SIPp started per second (its first INVITEs) while it was still starting them:
        SIPp's own cumulative ``CallRate(C)`` in the last periodic statistics row before every
        call had been started. A later row's includes the tail (the last calls' hold and BYE),
        and so would read low; a run shorter than one statistics period has no such row
        (None)."""
        rate = None
        for row in self.series:
            try:
                started = int(row.get("OutgoingCall(C)") or 0)
                value = float(row.get("CallRate(C)") or 0)
            except ValueError:
                continue
            if 0 < started < self.attempted:
                rate = value
        return rate

    @property
    def response_time_ms(self) -> float | None:
        """SIPp's mean ResponseTime1: first INVITE sent -> 200 OK (auth and agent included)."""
        raw = self.stats.get("ResponseTime1(C)")
        if not raw:
            return None
        parts = raw.split(":")
        try:
            h, m, s = int(parts[0]), int(parts[1]), int(parts[2])
            us = int(parts[3]) if len(parts) > 3 else 0
        except (ValueError, IndexError):
            return None
        return (h * 3600 + m * 60 + s) * 1000 + us / 1000


def run_sipp(
    target: tuple[str, int] | None,
    rate: float,
    calls: int,
    *,
    scenario: str | None = None,
    builtin: str | None = None,
    user: str = "",
    password: str = "",
    injection: list[str] | None = None,
    pause_ms: int = 0,
    timeout_s: float = 60,
    background: bool = False,
) -> subprocess.Popen[bytes] | SippRun:
    """Run SIPp as a UAC; returns the Popen when ``background`` (finish with ``collect``)."""
    work = Path(tempfile.mkdtemp(prefix="bench-sipp-"))
    args = [SIPP]
    if target is not None:
        args.append(f"{target[0]}:{target[1]}")
    if scenario is not None:
        (work / "scenario.xml").write_text(scenario)
        args += ["-sf", str(work / "scenario.xml"), "-au", user, "-ap", password]
    else:
        args += ["-sn", builtin or "uac", "-d", str(pause_ms)]
    if injection is not None:
        (work / "inject.csv").write_text("SEQUENTIAL\n" + "".join(f"{v};\n" for v in injection))
        args += ["-inf", str(work / "inject.csv")]
    args += [
        "-i",
        "127.0.0.1",
        "-p",
        str(free_port()),
        "-t",
        "u1",
        "-r",
        str(rate),
        "-m",
        str(calls),
        "-l",
        str(max(calls, 10)),
        "-recv_timeout",
        "10000",
        "-timeout",
        f"{int(timeout_s)}s",
        "-nostdin",
        "-nd",
        "-trace_stat",
        "-stf",
        str(work / "stat.csv"),
        "-fd",
        "1",
        "-trace_counts",
        "-trace_err",
        "-error_file",
        str(work / "errors.log"),
    ]
    proc = subprocess.Popen(
        args, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    proc.bench_work = work  # type: ignore[attr-defined]
    proc.bench_attempted = calls  # type: ignore[attr-defined]
    proc.bench_t0 = time.perf_counter()  # type: ignore[attr-defined]
    if background:
        return proc
    return collect(proc, timeout_s + 15)


def collect(proc: subprocess.Popen[bytes], timeout_s: float) -> SippRun:
    """Wait for a SIPp started by :func:`run_sipp` and read its files."""
    try:
        rc = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    wall = time.perf_counter() - proc.bench_t0  # type: ignore[attr-defined]
    work: Path = proc.bench_work  # type: ignore[attr-defined]
    series: list[dict[str, str]] = []
    stat_file = work / "stat.csv"
    if stat_file.exists():
        rows = list(csv.reader(stat_file.read_text(errors="replace").splitlines(), delimiter=";"))
        series = [dict(zip(rows[0], row, strict=False)) for row in rows[1:]]
    stats = series[-1] if series else {}
    counts: dict[str, int] = {}
    for path in glob.glob(str(work / "*_counts.csv")):
        rows = list(csv.reader(Path(path).read_text().splitlines(), delimiter=";"))
        if len(rows) >= 2:
            for k, v in zip(rows[0], rows[-1], strict=False):
                if v.strip().isdigit():
                    counts[k] = int(v)
    errors = (
        (work / "errors.log").read_text(errors="replace")[-2000:]
        if (work / "errors.log").exists()
        else ""
    )
    attempted: int = proc.bench_attempted  # type: ignore[attr-defined]
    return SippRun(attempted, stats, counts, wall, rc, errors, series=series)


def start_uas() -> tuple[subprocess.Popen[bytes], int]:
    """SIPp's built-in UAS (the CPS baseline) on a free port."""
    port = free_port()
    proc = subprocess.Popen(
        [SIPP, "-sn", "uas", "-i", "127.0.0.1", "-p", str(port), "-t", "u1", "-nostdin", "-nd"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(0.3)
    return proc, port
