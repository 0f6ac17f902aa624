"""Shared helpers for the benchmarks: process CPU/RSS from /proc, ports, percentiles, tables."""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of ``pid`` (all threads), seconds; psutil is not a dependency."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime and stime are fields 14 and 15.
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (all threads), seconds."""
    return sum(proc_cpu_split(pid))


def proc_rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class CpuWindow:
    """CPU seconds of several processes over one wall-clock window.

    ``stop`` returns user + system time; ``system`` then holds the system (kernel) part alone.
    """

    pids: dict[str, int]
    wall0: float = 0.0
    cpu0: dict[str, tuple[float, float]] | None = None
    system: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self.cpu0 = {k: proc_cpu_split(p) for k, p in self.pids.items()}
        self.wall0 = time.perf_counter()

    def stop(self) -> tuple[float, dict[str, float]]:
        """Wall seconds and CPU seconds per process since ``start``."""
        assert self.cpu0 is not None
        wall = time.perf_counter() - self.wall0
        now = {k: proc_cpu_split(p) for k, p in self.pids.items()}
        self.system = {k: now[k][1] - self.cpu0[k][1] for k in now}
        return wall, {k: sum(now[k]) - sum(self.cpu0[k]) for k in now}

    def system_share(self, name: str, total: float) -> float | None:
        """The kernel's share (%) of ``name``'s CPU in the window, None without CPU."""
        return round(100 * self.system[name] / total, 1) if total > 0 else None


def trusted_test_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed certificate for 127.0.0.1 and a CA bundle trusting it beside the system's
    CAs, as a production gateway loads them (``SSL_CERT_FILE``): (cert, key, bundle)."""
    import ssl

    from tests.certs import self_signed

    cert, key = self_signed(directory)
    system = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    bundle = directory / "bundle.pem"
    bundle.write_bytes(system.read_bytes() + cert.read_bytes())
    return cert, key, bundle


def free_port(kind: int = socket.SOCK_DGRAM, both: bool = False) -> int:
    """A free loopback port (``both``: free for UDP and TCP)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not both:
            return port
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


def pct(values: Sequence[float], q: float) -> float | None:
    """The ``q`` percentile (0-100) by nearest rank — the smallest value with at least q % of
    the values at or below it, rank ceil(q/100 x n) — or None for no data. (The epsilon keeps
    a product such as 99.9 x 1000 / 100 = 999.0000000000001 from moving a rank up.)"""
    if not values:
        return None
    s = sorted(values)
    rank = math.ceil(q * len(s) / 100 - 1e-9)
    return s[min(len(s) - 1, max(0, rank - 1))]


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_table(title: str, headers: list[str], rows: list[list[Any]]) -> None:
    """A plain aligned table."""
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def verdict(ok: bool | None) -> str:
    """PASS / FAIL / n/a."""
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")
