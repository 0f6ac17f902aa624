"""Debian's dnsmasq on a loopback port: a real DNS server with the SRV, NAPTR and A records a
test gives, for RFC 3263 lookups (the gateway's ``TELEPATH_DNS_SERVERS`` points at it)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import dns.asyncresolver
import dns.exception

from tests.conftest import free_udp_port, skip_loudly

ZONE = "test"  # names under it are ours: anything not configured is NXDOMAIN


@dataclass(frozen=True)
class Srv:
    """``_sip._udp.carrier.test`` → ``sip1.carrier.test:5070`` (priority, weight)."""

    name: str
    target: str
    port: int
    priority: int = 10
    weight: int = 0


@dataclass(frozen=True)
class Naptr:
    """A NAPTR record pointing at an SRV name (flags "S")."""

    name: str
    order: int
    preference: int
    service: str
    replacement: str


def _executable() -> str | None:
    found = shutil.which("dnsmasq")
    if found is None and Path("/usr/sbin/dnsmasq").exists():
        found = "/usr/sbin/dnsmasq"
    return found


async def _answers(port: int) -> bool:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    resolver.lifetime = 0.3
    try:
        await resolver.resolve(f"ready.{ZONE}", "A", search=False)
    except dns.exception.DNSException:
        return False
    return True


@contextlib.asynccontextmanager
async def dnsmasq(
    *,
    hosts: dict[str, str] | None = None,
    srv: list[Srv] | None = None,
    naptr: list[Naptr] | None = None,
) -> AsyncIterator[int]:
    """Run dnsmasq on a free UDP/TCP port of 127.0.0.1 with exactly these records (``hosts``:
    name → IPv4 address) until the block ends; yields its port. Skips loudly without it."""
    exe = _executable()
    if exe is None:
        skip_loudly("dnsmasq", "dnsmasq (Debian package dnsmasq-base) is missing")
    assert exe is not None
    records = {f"ready.{ZONE}": "127.0.0.1", **(hosts or {})}
    args = [f"--host-record={name},{address}" for name, address in records.items()]
    args += [f"--srv-host={r.name},{r.target},{r.port},{r.priority},{r.weight}" for r in srv or []]
    args += [
        f"--naptr-record={r.name},{r.order},{r.preference},S,{r.service},,{r.replacement}"
        for r in naptr or []
    ]
    for attempt in range(3):  # the free port may be taken between the probe and the bind
        port = free_udp_port()
        proc = await asyncio.create_subprocess_exec(
            exe,
            "--keep-in-foreground",
            f"--port={port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--pid-file=",
            f"--local=/{ZONE}/",
            *(["--user=root"] if os.geteuid() == 0 else []),  # else it drops to "nobody"
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            for _ in range(50):
                if proc.returncode is not None or await _answers(port):
                    break
                await asyncio.sleep(0.05)
            if proc.returncode is not None:
                assert proc.stderr is not None
                error = (await proc.stderr.read()).decode(errors="replace")
                if "in use" in error and attempt < 2:
                    continue
                raise AssertionError(f"dnsmasq failed: {error}")
            if not await _answers(port):
                raise AssertionError("dnsmasq did not answer")
            yield port
            return
        finally:
            if proc.returncode is None:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 5)
