"""Whether the host of a URL we will connect to (a webhook ``url``, a ``custom_endpoint``) is
one a connection can be made to: an IP address or a DNS host name.

RFC 3986 §3.2.2 lets a URL's host be any ``reg-name`` (percent-encoded octets, ``_``, ``~``,
``!``...), which no resolver looks up: such a URL was taken, and every delivery or call to it
then failed (found by review: ``https://%zz/``).
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address
from typing import Final
from urllib.parse import SplitResult

from telepath.api.registration_input import HOSTNAME

#: RFC 1035 §2.3.4: at most 253 characters in a name's text form (255 octets on the wire).
NAME_MAX: Final = 253


def connectable_host(parts: SplitResult) -> bool:
    """Whether ``parts`` (a ``urlsplit`` result with a host) names an IP address or a DNS host
    name: an IPv6 address in brackets (no zone: RFC 6874's zone is the sender's interface,
    meaningless to us), an IPv4 address in dotted decimal, or a host name (RFC 1123 §2.1:
    labels of letters, digits and inner hyphens, up to 63 characters, the top one not all
    digits — so ``1.2.3`` is neither), non-ASCII ones in their IDNA form (RFC 5890)."""
    host = parts.hostname or ""  # lower case, without the brackets
    hostport = parts.netloc.rpartition("@")[2]
    if hostport.startswith("["):
        # RFC 3986 §3.2: host [":" port]. Python 3.11's urlsplit ignores anything else after
        # the "]" (found by review: "https://[::1]x/" was taken, every delivery then failed).
        if "%" in host or not re.fullmatch(r":[0-9]*|", hostport.partition("]")[2]):
            return False
        try:
            IPv6Address(host)
        except ValueError:
            return False  # an IPvFuture literal (RFC 3986 §3.2.2): nothing connects to one
        return True
    if re.fullmatch(r"[0-9.]+", host):
        try:
            IPv4Address(host)
        except ValueError:
            return False
        return True
    try:
        name = host.encode("idna").decode("ascii")  # each label checked: 1 to 63 characters
    except UnicodeError:
        return False
    name = name.removesuffix(".")  # a fully qualified name's root
    return len(name) <= NAME_MAX and HOSTNAME.fullmatch(name) is not None
