"""What ``telepath serve`` checks before it opens anything: settings that pass ``Settings``'
own checks, yet that a part of the gateway refuses when it is built or, worse, at every call.

``Settings`` (``config.py``) sits below every other layer and cannot know which codec names
the SDP code supports, and the like. Rather than a copy of those rules there, each check here
builds the part the way the gateway does, with the same function, and reports what it raises
under the variable's name. ``telepath serve`` prints each as ``configuration error: …`` and
exits 2 — before the database is migrated or a master key generated, not after the agent of a
caller's call connected.
"""

from __future__ import annotations

from collections.abc import Callable

from telepath.calls.config import CallControlConfig
from telepath.config import Settings


def _codecs(settings: Settings) -> object:
    return CallControlConfig.from_settings(settings, "127.0.0.1")


#: (variable, check): a check raises ``ValueError`` with the reason.
_CHECKS: tuple[tuple[str, Callable[[Settings], object]], ...] = (("TELEPATH_SIP_CODECS", _codecs),)


def problems(settings: Settings) -> list[str]:
    """Every setting the gateway would refuse, as ``TELEPATH_X: reason`` lines."""
    found: list[str] = []
    for variable, check in _CHECKS:
        try:
            check(settings)
        except ValueError as exc:
            found.append(f"{variable}: {exc}")
    return found
