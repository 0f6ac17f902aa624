"""``WriteJournal``: what a ``GroupCommit`` keeps through an outage, on disk, and replayed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from telepath.db.group_commit import GroupCommit
from telepath.db.write_journal import WriteJournal, journals_of, read_journal, replay_journal
from tests.unit.test_group_commit import Flaky, transient

pytestmark = pytest.mark.unit

WHEN = datetime(2026, 12, 6, 11, 22, 33, 456000, tzinfo=UTC)


def _item(i: int) -> dict[str, Any]:
    return {"n": i}


def _group(store: Flaky, path: Path, first_retry_s: float) -> GroupCommit[int]:
    return GroupCommit(
        store.batch,
        store.single,
        name="t",
        retryable=transient,
        first_retry_s=first_retry_s,
        journal=WriteJournal(path, _item),
    )


def _journaled(path: Path) -> list[int]:
    return [item["n"] for item in read_journal(path)] if path.exists() else []


async def test_kept_writes_are_on_disk_until_they_land(tmp_path: Path) -> None:
    path = tmp_path / "journal" / "i1.w.jsonl"
    store = Flaky()
    group = _group(store, path, 0.05)
    done = [group.submit(1), group.submit(2)]
    await asyncio.sleep(0.01)
    assert group.parked == 2 and _journaled(path) == [1, 2]  # kept: copied at once
    done.append(group.submit(3))  # joins the kept ones: on disk too
    assert _journaled(path) == [1, 2, 3]
    store.up = True
    await asyncio.wait_for(asyncio.gather(*done), 5)
    assert not path.exists()  # all landed: nothing to replay


async def test_at_shutdown_what_is_given_up_stays_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "i1.w.jsonl"
    store = Flaky()
    group = _group(store, path, 60)
    lost = group.submit(7)
    await asyncio.sleep(0.01)
    assert await group.close(0.1) == 1
    with pytest.raises(ConnectionError):
        await lost
    assert _journaled(path) == [7]
    assert journals_of(tmp_path, ["i0", "i1"], "w") == [path]


async def test_a_journal_without_a_disk_never_fails_the_write(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    store = Flaky()
    group = _group(store, tmp_path / "file" / "i1.w.jsonl", 0.05)  # a directory it can't be
    done = group.submit(1)
    await asyncio.sleep(0.01)
    assert group.parked == 1  # kept in memory as before
    store.up = True
    await asyncio.wait_for(done, 5)
    assert store.transactions == [[1]]


async def test_replay_round_trips_datetimes_and_skips_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "i1.w.jsonl"
    journal: WriteJournal[dict[str, Any]] = WriteJournal(path, lambda item: item)
    journal.kept({"at": WHEN, "rows": [{"created": WHEN, "n": 1}]})
    journal.kept({"at": None, "rows": []})
    journal.detach()
    with path.open("a") as torn:
        torn.write('{"at": {"$datetime": "2026-')  # killed in mid-write
    submitted: list[dict[str, Any]] = []

    def submit(item: dict[str, Any]) -> asyncio.Future[None]:
        submitted.append(item)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    assert await replay_journal(path, dict, submit, 1) == 2
    assert submitted == [
        {"at": WHEN, "rows": [{"created": WHEN, "n": 1}]},
        {"at": None, "rows": []},
    ]
    assert not path.exists()


async def test_a_replay_the_database_does_not_take_in_time_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "i1.w.jsonl"
    journal: WriteJournal[dict[str, Any]] = WriteJournal(path, lambda item: item)
    journal.kept({"n": 1})
    journal.detach()
    never: list[asyncio.Future[None]] = []

    def submit(item: dict[str, Any]) -> asyncio.Future[None]:
        never.append(asyncio.get_running_loop().create_future())
        return never[-1]

    assert await replay_journal(path, dict, submit, 0.05) == 1
    assert path.exists()  # replayed again next time: the writes are idempotent


def test_a_journal_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """It holds call records (phone numbers, SIP traces) and event payloads."""
    path = tmp_path / "data" / "journal" / "i1.w.jsonl"
    journal: WriteJournal[dict[str, Any]] = WriteJournal(path, lambda item: item)
    journal.kept({"from_number": "+14155550100"})
    journal.detach()
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_a_long_outage_does_not_fill_the_disk(tmp_path: Path) -> None:
    """Past ``max_bytes`` nothing more is copied (the writes stay kept in memory, bounded as
    before); the file is never larger than the bound."""
    path = tmp_path / "i1.w.jsonl"
    journal: WriteJournal[dict[str, Any]] = WriteJournal(path, lambda item: item, max_bytes=100)
    for i in range(50):
        journal.kept({"n": i, "pad": "x" * 10})
    assert 0 < path.stat().st_size <= 100
    assert [item["n"] for item in read_journal(path)] == list(range(journal.lines))
    journal.emptied()  # it all landed: the next outage starts a new file
    journal.kept({"n": 0})
    journal.detach()
    assert journal.lines == 1 and read_journal(path) == [{"n": 0}]
