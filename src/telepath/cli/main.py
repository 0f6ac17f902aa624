"""The ``telepath`` command line: serve, API keys, secrets."""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from pydantic import ValidationError

from telepath.api.state import ApiState
from telepath.cli.calls import calls_app
from telepath.cli.runtime import open_state
from telepath.config import Settings, config_errors
from telepath.db.repository import DEFAULT_ACCOUNT_NAME, AccountRepository
from telepath.errors import ConfigurationError, DatabaseUnavailable

if TYPE_CHECKING:
    from telepath.cli.dialer import DialResult

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Telepath SIP-to-AI gateway")
keys_app = typer.Typer(no_args_is_help=True, help="Manage API keys")
secrets_app = typer.Typer(no_args_is_help=True, help="Manage the master key for secrets at rest")
app.add_typer(keys_app, name="keys")
app.add_typer(secrets_app, name="secrets")
app.add_typer(calls_app, name="calls")

T = TypeVar("T")


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        for line in config_errors(exc):  # never str(exc): it may show a secret
            typer.echo(f"configuration error: {line}", err=True)
        raise typer.Exit(2) from None


@contextlib.contextmanager
def _refused() -> Iterator[None]:
    """What only shows once the configuration is used — the master key file
    (``<data dir>/secret.key``) holding something that is no key — said as a configuration
    error (exit 2) rather than a traceback. The reason names the file, never a key. A database
    that cannot be reached or opened is said in one line too (exit 1), never its password."""
    try:
        yield
    except ConfigurationError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from None
    except DatabaseUnavailable as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


def _with_state(fn: Callable[[ApiState], Awaitable[T]]) -> T:
    async def run() -> T:
        async with open_state(_settings()) as state:
            return await fn(state)

    with _refused():
        return asyncio.run(run())


@app.command()
def serve() -> None:
    """Run the HTTP API, SIP and media servers in one process (configured by TELEPATH_*)."""
    from telepath.cli.preflight import problems
    from telepath.cli.serve import run_serve

    settings = _settings()
    refused = problems(settings)  # before the database is opened or a key generated
    for line in refused:
        typer.echo(f"configuration error: {line}", err=True)
    if refused:
        raise typer.Exit(2)
    with _refused():
        run_serve(settings)


@app.command("sip-worker", hidden=True)
def sip_worker(udp_fd: int, inbox_fd: int, control_fd: int) -> None:
    """A SIP worker process, started by 'telepath serve' when TELEPATH_SIP_WORKERS > 1."""
    from telepath.cli.workers import main as worker_main

    worker_main(udp_fd, inbox_fd, control_fd)


@keys_app.command("create")
def keys_create(
    name: str = typer.Option(..., "--name", help="What the key is for, e.g. 'production'"),
    account: str = typer.Option(DEFAULT_ACCOUNT_NAME, "--account", help="Account name"),
) -> None:
    """Create an API key and print it once (only its hash is stored)."""

    async def run(state: ApiState) -> str:
        async with state.sessions() as session:
            issued = await AccountRepository(session).issue_key(account, name)
            await session.commit()
            typer.echo(f"Created key {issued.key.id} for account '{issued.account.name}'.")
            return issued.plaintext

    plaintext = _with_state(run)
    typer.echo("Store it now; it will not be shown again:")
    typer.echo(plaintext)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (id, account, name, hint, status); never the keys themselves."""

    async def run(state: ApiState) -> None:
        async with state.sessions() as session:
            for key, account in await AccountRepository(session).list_keys():
                status = "revoked" if key.revoked_at else "active"
                used = key.last_used_at.isoformat() if key.last_used_at else "never"
                typer.echo(
                    f"{key.id}  {account.name:<16} {key.name:<16} {key.hint:<16} "
                    f"{status:<8} last used {used}"
                )

    _with_state(run)


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key id (key_...)")) -> None:
    """Revoke an API key; requests with it get 401 at once."""

    async def run(state: ApiState) -> bool:
        async with state.sessions() as session:
            done = await AccountRepository(session).revoke(key_id)
            await session.commit()
            return done

    if not _with_state(run):
        typer.echo(f"no active key with id {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"Revoked {key_id}.")


@secrets_app.command("rotate")
def secrets_rotate() -> None:
    """Re-encrypt every stored secret under a new master key.

    With the generated key file: a new key is put first in it and everything is re-encrypted;
    the older keys stay in the file (decrypt-only) until 'telepath secrets prune'. A running
    service follows the file: no restart needed. With TELEPATH_SECRET_KEY: restart the services
    with the new key first (new,old), run this with the same value, then 'telepath secrets
    prune', then drop the old key from the variable and restart.
    """
    from telepath.db.rekey import rotate_master_key

    _rekey(rotate_master_key)


@secrets_app.command("prune")
def secrets_prune() -> None:
    """Re-encrypt what is still under an older master key, then remove the older keys.

    With the generated key file: they are removed from it only once nothing needs them; if a
    secret cannot be re-encrypted, nothing is removed and the exit status is 1. With
    TELEPATH_SECRET_KEY: says whether the older keys can be dropped from the variable.
    """
    from telepath.db.rekey import prune_master_keys

    _rekey(prune_master_keys)


def _rekey(step: Callable[[Settings], Coroutine[Any, Any, str]]) -> None:
    from telepath.db.rekey import RekeyError

    try:
        with _refused():
            message = asyncio.run(step(_settings()))
    except RekeyError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(message)


def _finite(value: float) -> float:
    """``value`` if it is a finite number: ``min=`` lets infinity through (NaN too, in some
    Click versions), and an infinite timeout is none — exit 2 like a value below the minimum."""
    if not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number of seconds, not {value:g}")
    return value


@app.command("call")
def call(
    target: str = typer.Argument(
        ...,
        help="SIP URI of the trunk, e.g. sip:alice@127.0.0.1:5060 (UDP), "
        "sip:alice@host;transport=tcp, sips:alice@host (TLS, port 5061)",
    ),
    password: str | None = typer.Option(
        None,
        "--password",
        envvar="TELEPATH_CALL_PASSWORD",
        show_envvar=True,
        help="Digest password (or TELEPATH_CALL_PASSWORD, which keeps it out of ps and the "
        "shell's history); when omitted, asked for if the gateway challenges and stdin is a "
        "terminal, else the call fails (401) (a trunk with sip_auth address is called by "
        "number without one: sip:+14155550100@host)",
    ),
    username: str | None = typer.Option(None, "--username", help="Digest user (default: URI user)"),
    duration: float = typer.Option(
        10.0, "--duration", help="Seconds to stay on the call (at most 120)"
    ),
    tone: float = typer.Option(440.0, "--tone", help="Tone to play as the caller (Hz); 0: silence"),
    play: Path | None = typer.Option(
        None,
        "--play",
        # The rates of rtp/resample.py's RESAMPLED_RATES, written out so that the CLI starts
        # without numpy (test_cli.py keeps them in step).
        help="WAV to play instead: mono, 16-bit, 8, 16, 22.05, 24, 44.1 or 48 kHz, at most 120 s "
        "(checked before dialling)",
    ),
    record: Path | None = typer.Option(
        None,
        "--record",
        help="Save the agent's audio as WAV (the path is checked before dialling)",
    ),
    ring_timeout: float = typer.Option(
        60.0,
        "--ring-timeout",
        min=0.1,
        callback=_finite,
        help="Seconds to wait for the answer once the gateway rings (a 1xx came), counted from "
        "the INVITE; the call is then cancelled (CANCEL, RFC 3261 §9.1). Without any response "
        "the dialler gives up after 15 s",
    ),
    local_ip: str | None = typer.Option(
        None,
        "--local-ip",
        help="Our address for SIP and RTP (default: the one the route to the gateway leaves by)",
    ),
    ca_file: Path | None = typer.Option(
        None, "--ca-file", help="TLS: trust this CA (PEM) for the gateway's certificate"
    ),
    srtp: bool = typer.Option(False, "--srtp", help="TLS: offer SRTP (SDES) for the media"),
    srtp_suite: str = typer.Option(
        "AES_CM_128_HMAC_SHA1_80",
        "--srtp-suite",
        help="With --srtp: the suite to offer (AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32, "
        "AEAD_AES_128_GCM or AEAD_AES_256_GCM)",
    ),
) -> None:
    """Place a test call to a trunk: digest auth, play audio, record the agent, hang up."""
    from telepath.cli.call_audio import write_wav
    from telepath.cli.dialer import Dialer
    from telepath.sip.errors import SipParseError
    from telepath.transport.dns import SipLocator

    def dialer_with(secret: str | None) -> Dialer:
        try:
            made = Dialer(
                target,
                username=username or "",
                password=secret,
                local_ip=local_ip,
                ca_file=ca_file,
                srtp=srtp,
                srtp_suite=srtp_suite,
                locator=SipLocator(_settings().dns_server_list),
            )
        except SipParseError as exc:
            typer.echo(f"bad SIP URI: {exc}", err=True)
            raise typer.Exit(2) from None
        except ValueError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
        made.username = username or made.uri.user or ""
        return made

    def place(secret: str | None) -> DialResult:
        call = dialer_with(secret).run(
            duration_s=duration, tone_hz=tone or None, play=play, ring_timeout_s=ring_timeout
        )
        return asyncio.run(call)

    created = False
    try:
        if record is not None:
            created = _claimed(record)
        result = _placed(place, password)
        _report(result, ring_timeout)
    except BaseException:
        if created and record is not None:
            record.unlink(missing_ok=True)  # the call failed: no empty file left behind
        raise
    if record is not None:
        try:
            write_wav(record, result.recorded)
        except OSError as exc:
            typer.echo(
                f"cannot save the agent's audio to {record}: {exc.strerror or exc}", err=True
            )
            raise typer.Exit(1) from None
        typer.echo(f"agent audio saved to {record}")


def _claimed(record: Path) -> bool:
    """``--record``'s path checked before dialling (exit 2); whether the check created it."""
    from telepath.cli.call_audio import CallOptionError, claim_record_path

    try:
        return claim_record_path(record)
    except CallOptionError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def _placed(place: Callable[[str | None], DialResult], password: str | None) -> DialResult:
    """The call placed (again with a password asked for, when challenged without one); why
    it could not be, said and exited with (2: a bad option, found before dialling)."""
    from telepath.cli.call_audio import CallOptionError

    try:
        result = place(password)
        if password is None and result.status in (401, 407) and sys.stdin.isatty():
            # Challenged without a password: ask, and place the call again (a new one).
            secret = typer.prompt("Password", hide_input=True)
            result = place(secret)
    except CallOptionError as exc:  # found before dialling
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    except TimeoutError:
        typer.echo("no answer from the gateway (timeout)", err=True)
        raise typer.Exit(1) from None
    except ssl.SSLError as exc:  # before OSError: a subclass
        typer.echo(f"TLS with the gateway failed: {exc.reason or exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"cannot reach the gateway: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    return result


def _report(result: DialResult, ring_timeout: float) -> None:
    """Print how the call went; ``typer.Exit(1)`` when it failed."""
    for line in result.log:
        typer.echo(line)
    if result.cancelled:
        typer.echo(f"no answer {ring_timeout:g} s after the INVITE: call cancelled", err=True)
        raise typer.Exit(1)
    if result.error is not None:
        typer.echo(f"call failed: {result.error} (hung up)", err=True)
        raise typer.Exit(1)
    if result.setup_ms is None:
        typer.echo(f"call failed: {result.status} {result.reason}", err=True)
        raise typer.Exit(1)
    typer.echo(
        f"answered in {result.setup_ms:.0f} ms, codec {result.codec}"
        f"{f' over SRTP ({result.srtp})' if result.srtp else ''}, "
        f"received {result.received_ms / 1000:.1f} s of agent audio, ended by {result.ended_by}"
    )


def main() -> None:
    """Console-script entry point."""
    app()
