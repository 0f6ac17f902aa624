from __future__ import annotations

import ast
from pathlib import Path

import pytest

import telepath.sdp
from telepath.errors import ProtocolError
from telepath.sdp import NoCommonCodec, SdpError
from telepath.sdp.errors import WARN_MEDIA_TYPE_NOT_AVAILABLE

pytestmark = pytest.mark.unit

SDP_DIR = Path(telepath.sdp.__file__).parent
ALLOWED_TELEPATH = {"telepath.errors", "telepath.rtp.codecs", "telepath.rtp.srtp_keys"}
FORBIDDEN = {"asyncio", "socket", "selectors", "threading"}


def test_sdp_package_is_pure() -> None:
    modules = sorted(SDP_DIR.glob("*.py"))
    assert {p.name for p in modules} >= {"__init__.py", "model.py", "parser.py", "negotiate.py"}
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: use absolute imports"
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
                if name.startswith("telepath."):
                    assert name.startswith("telepath.sdp") or name in ALLOWED_TELEPATH, name


def test_public_api_is_exported() -> None:
    for name in telepath.sdp.__all__:
        assert getattr(telepath.sdp, name) is not None
        obj = getattr(telepath.sdp, name)
        if callable(obj) and not isinstance(obj, type) and name != "Direction":
            assert obj.__doc__, f"{name} lacks a docstring"


def test_error_hierarchy_and_status() -> None:
    err = SdpError("bad")
    assert isinstance(err, ProtocolError)
    assert err.status_hint == 400
    nc = NoCommonCodec("none", agent="gw.example.com")
    assert isinstance(nc, SdpError)
    assert nc.status_hint == 488
    assert nc.warn_code == 305
    assert nc.warning == '305 gw.example.com "Incompatible media format"'
    other = NoCommonCodec("no audio", warn_code=WARN_MEDIA_TYPE_NOT_AVAILABLE)
    assert other.warning_header("10.0.0.1:5060") == '304 10.0.0.1:5060 "Media type not available"'
