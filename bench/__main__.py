"""``python -m bench [all|cps|calls|media|frame|tls|providers|webhooks] [--quick]``: run, print
tables, write JSON.

  cps     calls/s with digest auth + agent connect (SIPp → ``telepath serve``), vs ``sipp -sn uas``
  calls   N concurrent bridged calls with an echo agent, vs a minimal asyncio UDP echo
  media   the MediaSession pacing benchmark and the codec/resampler micro-benchmarks
  frame   the per-frame Python of both directions without sockets, vs the library calls alone
  tls     CPU of a wss:// agent connection, shared client context vs one per connection
  providers  call set-up CPU per provider kind (local fakes, plain and TLS) vs the custom agent
  webhooks   CPU per outbox write and per delivery, vs a bare httpx POST

Results go to ``bench/results/<date>.json`` (one file per day; a run replaces the sections it
ran, each section carrying its own ``started_at``, ``machine`` and ``git`` commit with a dirty
flag, since the sections of one file may come from different runs). The whole run takes
about 10 minutes, ``--quick`` a few minutes. The machine's load average is recorded around
every step: re-run when the machine is quiet if it is high. Every suite runs on the event loop
``telepath serve`` uses (uvloop when installed), whatever ran before it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import ROOT, loadavg

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "event_loop": loop,
    }


def git_state() -> dict[str, Any]:
    """The checkout the bench runs from: ``git rev-parse HEAD`` and whether the work tree has
    changes (``git status --porcelain``); None for each when git cannot tell."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


@contextlib.contextmanager
def gateway_event_loop() -> Iterator[str]:
    """Run a suite on the event loop ``telepath serve`` installs (uvloop when installed) and put
    the previous policy back after it, so that no suite's figures depend on which suite ran
    before it in the same process (``media`` used to leave uvloop set for every later one)."""
    from telepath.cli.serve import install_event_loop

    previous = asyncio.get_event_loop_policy()
    try:
        yield install_event_loop()
    finally:
        asyncio.set_event_loop_policy(previous)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "suite",
        nargs="?",
        default="all",
        choices=["all", "cps", "calls", "media", "frame", "tls", "providers", "webhooks"],
    )
    parser.add_argument("--quick", action="store_true", help="a shorter run (a few minutes)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: by date)")
    args = parser.parse_args()
    everything = ["cps", "calls", "media", "frame", "tls", "providers", "webhooks"]
    suites = everything if args.suite == "all" else [args.suite]
    now = datetime.now(UTC)
    info = machine()
    print(
        f"telepath bench {now:%Y-%m-%d %H:%M} UTC; {info['cpu']} x{info['cores']}; "
        f"python {info['python']} ({info['event_loop']}); load {loadavg()}"
        + ("; --quick" if args.quick else ""),
        flush=True,
    )
    results: dict[str, Any] = {}
    t0 = time.monotonic()
    git = git_state()
    for name in suites:
        started = time.monotonic()
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        load_before = loadavg()
        if name == "cps":
            from bench import cps as mod
        elif name == "calls":
            from bench import calls as mod  # type: ignore[no-redef]
        elif name == "frame":
            from bench import frame_path as mod  # type: ignore[no-redef]
        elif name == "tls":
            from bench import tls_connect as mod  # type: ignore[no-redef]
        elif name == "providers":
            from bench import providers as mod  # type: ignore[no-redef]
        elif name == "webhooks":
            from bench import webhooks as mod  # type: ignore[no-redef]
        else:
            from bench import media as mod  # type: ignore[no-redef]
        print(f"\n== {name} ==", flush=True)
        with gateway_event_loop() as event_loop:
            section = mod.run(quick=args.quick)
        section["event_loop"] = event_loop
        section["load_before"] = load_before
        section["load_after"] = loadavg()
        section["seconds"] = round(time.monotonic() - started, 1)
        section["quick"] = args.quick
        section["started_at"] = started_at
        section["machine"] = info
        section["git"] = git
        results[name] = section
    out = args.out or RESULTS / f"{now:%Y-%m-%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {}
    if out.exists():
        try:
            doc = json.loads(out.read_text())
        except ValueError:
            doc = {}
    # one date or machine for the whole file would be this run's over other runs' sections
    doc.pop("date", None)
    doc.pop("machine", None)
    doc.update(results)
    out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print("\n== goals ==")
    for name, section in results.items():
        goals = section.get("summary", {}).get("goals", {})
        for key, value in goals.items():
            if isinstance(value, dict):
                for goal, v in value.items():
                    print(f"  {v:4}  [{name} {key}] {goal}")
            else:
                print(f"  {value:4}  [{name}] {key}")
    print(f"\nload {loadavg()}; {time.monotonic() - t0:.0f} s; results in {out}")


if __name__ == "__main__":
    main()
