"""Phone numbers in SIP and tel URIs, as canonical E.164 (``"+14155550100"``).

A carrier names the called number in the Request-URI's user part (``sip:+14155550100@host``,
RFC 3261 §19.1.6; ``tel:`` URIs, RFC 3966), with or without the ``+``, sometimes with visual
separators and parameters (``+1-415-555-0100;npdi``). Hand-written: a few lines of string work
that no maintained library does without pulling in a numbering-plan database, which routing by
an exact number does not need.

Decision: without a ``+`` a number is taken as international only when it cannot be a national
one of ten digits or fewer (``14155550100`` is ``+14155550100``; ``4155550100`` is nothing), and
a leading ``0`` (a national trunk prefix) is never E.164 — so a national form never matches a
configured number of another country by accident.
"""

from __future__ import annotations

from telepath.sip.uri import SipUri

#: RFC 3966 §5.1.1 visual separators, dropped before the digits are read.
_SEPARATORS = str.maketrans("", "", "-.()")
E164_MIN_DIGITS, E164_MAX_DIGITS = 6, 15  # ITU-T E.164 allows at most 15
_BARE_MIN_DIGITS = 11  # without "+": more digits than a national number has


def canonical_number(text: str, *, plus_required: bool = False) -> str | None:
    """``text`` as ``"+"`` and its digits, or None if it is not an E.164 number.

    Parameters after ``;`` are dropped; so are visual separators. Without a ``+`` (refused when
    ``plus_required``) at least eleven digits are needed (see the module's decision).
    """
    value = text.split(";", 1)[0].strip().translate(_SEPARATORS).replace(" ", "")
    plus = value.startswith("+")
    digits = value[1:] if plus else value
    if not plus and plus_required:
        return None
    if not (digits.isascii() and digits.isdigit()) or digits.startswith("0"):
        return None
    least = E164_MIN_DIGITS if plus else _BARE_MIN_DIGITS
    if not least <= len(digits) <= E164_MAX_DIGITS:
        return None
    return "+" + digits


def number_of(uri: SipUri) -> str | None:
    """The E.164 number a SIP or tel URI's user part names, or None."""
    user = uri.user_unescaped
    return None if not user else canonical_number(user)
