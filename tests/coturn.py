"""Debian's coturn (``turnserver --stun-only``) on a loopback port: a real STUN server
(RFC 8489 Binding) for the gateway's ``TELEPATH_STUN_SERVER``."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from aioice import stun

from tests.conftest import free_udp_port, skip_loudly


def binding_response(mapped: tuple[str, int], transaction_id: bytes | None = None) -> bytes:
    """A Binding success response (RFC 8489 §7.3.1) naming ``mapped`` in XOR-MAPPED-ADDRESS,
    answering ``transaction_id`` (a fresh one when None: a stray answer)."""
    answer = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE)
    if transaction_id is not None:
        answer.transaction_id = transaction_id
    answer.attributes["XOR-MAPPED-ADDRESS"] = mapped
    return bytes(answer)


def _answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        s.sendto(bytes(request), ("127.0.0.1", port))
        try:
            data, _ = s.recvfrom(2048)
        except OSError:
            return False
        return stun.parse_message(data).transaction_id == request.transaction_id


@contextlib.asynccontextmanager
async def stun_server(tmp_path: Path) -> AsyncIterator[int]:
    """Run coturn as a STUN-only server on a free UDP port of 127.0.0.1 until the block ends;
    yields its port. Skips loudly without it."""
    exe = shutil.which("turnserver", path="/usr/bin:/usr/sbin:/usr/local/bin")
    if exe is None:
        skip_loudly("coturn", "turnserver (Debian package coturn) is missing")
    assert exe is not None
    port = free_udp_port()
    work = tmp_path / f"coturn-{port}"
    work.mkdir()
    proc = await asyncio.create_subprocess_exec(
        exe,
        "-n",  # no configuration file
        "--stun-only",
        "--listening-ip=127.0.0.1",
        f"--listening-port={port}",
        "--no-tcp",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        f"--userdb={work / 'turndb'}",
        f"--pidfile={work / 'turnserver.pid'}",
        f"--log-file={work / 'turnserver.log'}",
        "--no-stdout-log",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(50):
            if proc.returncode is not None:
                break
            if await asyncio.to_thread(_answers, port):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("coturn did not answer a STUN Binding request")
        if proc.returncode is not None:
            raise AssertionError(f"coturn exited ({proc.returncode}); see {work}")
        yield port
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 5)
