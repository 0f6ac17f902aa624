"""The webhook signature scheme: what receivers verify."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from telepath.webhooks.signing import (
    SECRET_PREFIX,
    compute_signature,
    new_secret,
    signature_header,
    verify_signature,
)

pytestmark = pytest.mark.unit

SECRET = "whsec_test_secret"
BODY = b'{"id":"evt_1","type":"call.started","created_at":"2026-03-05T10:30:00.000Z","data":{}}'
T = 1_772_706_600


def test_scheme_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert compute_signature(SECRET, T, BODY) == expected
    assert signature_header(SECRET, BODY, T) == f"t={T},v1={expected}"


def test_good_signature() -> None:
    header = signature_header(SECRET, BODY, T)
    assert verify_signature(SECRET, header, BODY, now=T + 10)
    assert verify_signature(SECRET, header, BODY, 300, now=T - 10)  # small clock skew


def test_current_time_by_default() -> None:
    assert verify_signature(SECRET, signature_header(SECRET, BODY), BODY)


@pytest.mark.parametrize(
    "body", [BODY + b" ", BODY.replace(b"evt_1", b"evt_2"), b"", BODY.decode().upper().encode()]
)
def test_tampered_body(body: bytes) -> None:
    assert not verify_signature(SECRET, signature_header(SECRET, BODY, T), body, now=T)


def test_wrong_secret() -> None:
    header = signature_header("whsec_other", BODY, T)
    assert not verify_signature(SECRET, header, BODY, now=T)


def test_stale_and_future_timestamps() -> None:
    header = signature_header(SECRET, BODY, T)
    assert not verify_signature(SECRET, header, BODY, 300, now=T + 301)
    assert not verify_signature(SECRET, header, BODY, 300, now=T - 301)
    assert verify_signature(SECRET, header, BODY, 300, now=T + 300)


def test_timestamp_is_signed() -> None:
    sig = compute_signature(SECRET, T, BODY)
    assert not verify_signature(SECRET, f"t={T + 5},v1={sig}", BODY, now=T + 5)


FULL_WIDTH = str.maketrans(
    "0123456789", "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19"
)
MALFORMED = [
    "",
    "garbage",
    f"v1={compute_signature(SECRET, T, BODY)}",  # no timestamp
    f"t={T}",  # no signature
    f"t=abc,v1={compute_signature(SECRET, T, BODY)}",
    f"t=\u00b2,v1={compute_signature(SECRET, T, BODY)}",  # a digit to isdigit, not to int
    f"t=-{T},v1={compute_signature(SECRET, T, BODY)}",
    f"t={T},v1=",
    f"t={T};v1={compute_signature(SECRET, T, BODY)}",
    # Found by review: hmac.compare_digest takes str of ASCII only and raised TypeError on
    # anything else — a crafted header crashed the receiver instead of failing the check.
    f"t={T},v1=\u00e9",
    f"t={T},v1=\u00e9{compute_signature(SECRET, T, BODY)[1:]}",  # as long as a good one
    f"t={T},v1=\udcff",
    f"t={T},v1=\uff11\uff12",  # full-width digits
    f"t={str(T).translate(FULL_WIDTH)},v1={compute_signature(SECRET, T, BODY)}",
    f"t=\u0661,v1={compute_signature(SECRET, T, BODY)}",  # an Arabic-Indic digit: int() takes
    f"t={'9' * 5000},v1={compute_signature(SECRET, T, BODY)}",  # past int()'s digit limit
]


@pytest.mark.parametrize("header", MALFORMED)
def test_malformed_headers(header: str) -> None:
    assert not verify_signature(SECRET, header, BODY, now=T)


def _documented_verify() -> Callable[[str, str, bytes], bool]:
    """The standalone ``verify`` of docs/webhooks.md ("without Telepath installed"), run as
    a receiver would paste it."""
    doc = (Path(__file__).parents[3] / "docs" / "webhooks.md").read_text()
    after = doc.split("without Telepath installed", 1)[1]
    snippet = after.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "docs/webhooks.md", "exec"), namespace)
    verify: Callable[[str, str, bytes], bool] = namespace["verify"]
    return verify


def test_the_documented_snippet_verifies_a_good_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    verify = _documented_verify()
    monkeypatch.setattr(time, "time", lambda: T + 10)
    assert verify(SECRET, signature_header(SECRET, BODY, T), BODY)
    other = compute_signature("whsec_old", T, BODY)
    assert verify(SECRET, f"t={T}, v1={other}, v1={compute_signature(SECRET, T, BODY)}", BODY)
    assert not verify(SECRET, signature_header(SECRET, BODY, T), BODY + b" ")
    assert not verify(SECRET, signature_header(SECRET, BODY, T - 400), BODY)


@pytest.mark.parametrize("header", MALFORMED)
def test_the_documented_snippet_refuses_malformed_headers(
    header: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: the snippet raised (TypeError for a non-ASCII ``v1``, ValueError for a
    ``t`` that ``str.isdigit`` takes and ``int`` does not) where it must answer False."""
    verify = _documented_verify()
    monkeypatch.setattr(time, "time", lambda: T)
    assert not verify(SECRET, header, BODY)


def test_any_of_several_signatures_matches() -> None:
    good = compute_signature(SECRET, T, BODY)
    other = compute_signature("whsec_old", T, BODY)
    assert verify_signature(SECRET, f"t={T},v1={other},v1={good}", BODY, now=T)
    assert verify_signature(SECRET, f"t={T}, v1={good}, v0=legacy", BODY, now=T)


def test_new_secrets() -> None:
    a, b = new_secret(), new_secret()
    assert a.startswith(SECRET_PREFIX) and len(a) >= len(SECRET_PREFIX) + 40
    assert a != b
