"""Debian's kamailio on a loopback port, for the tests that need a real proxy or registrar."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from tests.conftest import skip_loudly

KAMAILIO_MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
_BASE_MODULES = ("tm", "sl", "rr", "maxfwd", "pv", "siputils", "textops")


def config(port: int, routing: str, *, modules: tuple[str, ...] = (), tcp: bool = False) -> str:
    """A kamailio configuration listening on UDP ``port`` of 127.0.0.1 (and TCP ``port`` with
    ``tcp``), loading the stateful proxy's modules and ``modules``, with ``routing`` (the rest:
    parameters, routes)."""
    loads = "".join(f'loadmodule "{name}.so"\n' for name in _BASE_MODULES + modules)
    listen = f"listen=udp:127.0.0.1:{port}\n" + (f"listen=tcp:127.0.0.1:{port}\n" if tcp else "")
    return (
        "#!KAMAILIO\ndebug=1\nlog_stderror=yes\nchildren=1\nauto_aliases=no\n"
        f'{listen}mpath="{KAMAILIO_MODULES}/"\n{loads}\n{routing}'
    )


async def _answers_options(port: int, ready: bytes) -> bool:
    """An OPTIONS sent to ``port`` is answered with a response starting with ``ready``."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        local = s.getsockname()[1]
        probe = (
            f"OPTIONS sip:probe@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-probe{local}\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p\r\n"
            f"To: <sip:probe@127.0.0.1:{port}>\r\nCall-ID: probe-{local}\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        s.sendto(probe, ("127.0.0.1", port))
        try:
            data = await asyncio.wait_for(loop.sock_recv(s, 4096), 0.5)
        except TimeoutError:
            return False
        return data.startswith(ready)


@contextlib.asynccontextmanager
async def kamailio(cfg: str, tmp_path: Path, port: int, *, ready: bytes) -> AsyncIterator[int]:
    """Run kamailio with the configuration ``cfg`` (listening on ``port``) until the block
    ends; ready once an OPTIONS to it is answered with ``ready``. Skips loudly without it."""
    exe = shutil.which("kamailio")
    if exe is None or not (KAMAILIO_MODULES / "rr.so").exists():
        skip_loudly("kamailio", "kamailio (Debian package kamailio) is missing")
    assert exe is not None
    work = tmp_path / f"kamailio-{port}"
    work.mkdir()
    path = work / "kamailio.cfg"
    path.write_text(cfg)
    proc = await asyncio.create_subprocess_exec(
        exe,
        "-f",
        str(path),
        "-DD",
        "-E",
        "-m",
        "32",
        "-M",
        "8",
        "-Y",
        str(work),
        "-P",
        str(work / "kamailio.pid"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its worker processes go with it (os.killpg below)
    )
    try:
        for _ in range(50):
            if proc.returncode is not None:
                break
            if await _answers_options(port, ready):
                break
        else:
            raise AssertionError("kamailio did not answer an OPTIONS")
        if proc.returncode is not None:
            assert proc.stderr is not None
            raise AssertionError((await proc.stderr.read()).decode(errors="replace"))
        yield port
    finally:
        # the whole group: killing the main process alone left its workers running (seen
        # with a transaction still retransmitting at the end of a test)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 5)
