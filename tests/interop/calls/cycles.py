"""Finding reference cycles among our objects, for tests that require a call to be freed by
reference counting alone (see ``test_call_memory.py``)."""

from __future__ import annotations

import collections
import gc
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@contextmanager
def collector_off() -> Iterator[None]:
    """Run the block with the cyclic collector stopped, as if it never got round to it."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.collect()


@dataclass
class Garbage:
    """What a collection found unreachable: our objects among everything."""

    ours: list[object]
    everything: list[object]

    def __bool__(self) -> bool:
        return bool(self.ours)


def cyclic_garbage(prefix: str = "telepath.") -> Garbage:
    """Objects of modules under ``prefix`` that only the cyclic collector would free now."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        everything = list(gc.garbage)
        ours = [o for o in everything if type(o).__module__.startswith(prefix)]
        return Garbage(ours, everything)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def describe(garbage: Garbage, cycles: int = 3) -> str:
    """How many of each type, and the first few cycles as chains of types and attributes."""
    counts = collections.Counter(_name(o) for o in garbage.ours)
    lines = [f"{n} x {name}" for name, n in counts.most_common(20)]
    within = {id(o) for o in garbage.everything}
    shown: set[str] = set()
    for obj in garbage.ours:
        name = _name(obj)
        if name in shown or len(shown) >= cycles:
            continue
        path = _cycle_through(obj, within)
        if path is None:
            continue
        shown.add(name)
        lines.append(f"cycle through {name}:")
        lines += [f"  {_name(a)} -[{_via(a, b)}]->" for a, b in zip(path, path[1:], strict=False)]
    return "\n".join(lines)


def referrers(obj: object) -> str:
    """What refers to ``obj`` directly (types and attribute names; frames left out)."""
    found = [
        f"{_name(r)}[{_via(r, obj)}]"
        for r in gc.get_referrers(obj)
        if not isinstance(r, types.FrameType)
    ]
    return ", ".join(found[:12])


def _name(obj: object) -> str:
    kind = type(obj)
    name = f"{kind.__module__}.{kind.__qualname__}"
    qualname = getattr(obj, "__qualname__", None)
    func = getattr(obj, "__func__", None)
    if func is not None:
        qualname = getattr(func, "__qualname__", None)
    return f"{name}({qualname})" if isinstance(qualname, str) and kind is not type else name


def _via(holder: object, held: object) -> str:
    names: list[str] = []
    if isinstance(holder, dict):
        names += [repr(k)[:40] for k, v in holder.items() if v is held]
    names += [k for k, v in getattr(holder, "__dict__", {}).items() if v is held]
    if getattr(holder, "__self__", None) is held:
        names.append("__self__")
    if getattr(holder, "__closure__", None) is held:
        names.append("__closure__")
    if type(holder).__name__ == "cell":
        names.append("cell_contents")
    return ",".join(names) or "?"


def _cycle_through(start: object, within: set[int]) -> list[object] | None:
    """A shortest path of references from ``start`` back to itself through garbage only."""
    parent: dict[int, object | None] = {id(start): None}
    queue: collections.deque[object] = collections.deque([start])
    while queue:
        obj = queue.popleft()
        for ref in gc.get_referents(obj):
            if ref is start:
                path = [ref, obj]
                back = parent[id(obj)]
                while back is not None:
                    path.append(back)
                    back = parent[id(back)]
                path.reverse()
                return path
            if id(ref) in within and id(ref) not in parent:
                parent[id(ref)] = obj
                queue.append(ref)
    return None
