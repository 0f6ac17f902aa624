"""The architecture as a test: pure cores stay pure, the hot path never imports the outer ring."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SRC = Path(__file__).resolve().parents[2] / "src" / "telepath"

PURE = ("sip", "sdp", "rtp")
PURE_FORBIDDEN = {"asyncio", "socket", "selectors", "threading", "uvloop", "websockets"}
HOT_PATH = ("sip", "sdp", "rtp", "transport", "bridges", "calls")
OUTER_RING = ("telepath.api", "telepath.db", "telepath.webhooks", "telepath.cli")


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(package: str) -> list[Path]:
    found = sorted((SRC / package).rglob("*.py"))
    assert found, package
    return found


@pytest.mark.parametrize("package", PURE)
def test_pure_cores_do_no_io(package: str) -> None:
    for path in modules(package):
        for name in imports(path):
            top = name.split(".")[0]
            assert top not in PURE_FORBIDDEN, f"{path.relative_to(SRC)} imports {name}"
            if name.startswith("telepath."):
                layer = name.split(".")[1]
                allowed = (
                    {package, "errors", "clock", "log", "rtp"}
                    if package == "sdp"
                    else {
                        package,
                        "errors",
                        "clock",
                        "log",
                    }
                )
                assert layer in allowed, f"{path.relative_to(SRC)} imports {name}"


@pytest.mark.parametrize("package", HOT_PATH)
def test_hot_path_never_imports_the_outer_ring(package: str) -> None:
    for path in modules(package):
        for name in imports(path):
            assert not name.startswith(OUTER_RING), f"{path.relative_to(SRC)} imports {name}"


# Run in a fresh interpreter: this one has imported every bridge already (other tests).
_NO_IMPORT_AT_CALL_TIME = """
import sys
import telepath.calls.manager  # what the gateway imports before it takes calls
from telepath.bridges.base import CustomConfig, ElevenLabsConfig, OpenAIConfig
from telepath.bridges.registry import create_bridge

imported = []
sys.addaudithook(lambda event, args: imported.append(args[0]) if event == "import" else None)
create_bridge("openai", OpenAIConfig(api_key="k"))
create_bridge("elevenlabs", ElevenLabsConfig(api_key=None, agent_id="a"))
create_bridge("custom", CustomConfig("wss://a"))
create_bridge("custom", CustomConfig("wss://a", protocol="twilio"))
print(",".join(imported))
"""


def test_a_call_imports_nothing_on_the_event_loop() -> None:
    """The first call of each provider kind must not import its bridge: an import runs on the
    loop thread (35-45 ms per provider module, measured), stalling every call's media."""
    out = subprocess.run(
        [sys.executable, "-c", _NO_IMPORT_AT_CALL_TIME],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "", f"imported while building bridges: {out.stdout.strip()}"


def test_the_service_imports_no_test_only_dependency() -> None:
    """httpx, requests and the providers' SDKs are dev dependencies (tests, benchmark): a fresh
    ``pip install telepath`` does not have them."""
    dev_only = {"httpx", "requests", "openai", "elevenlabs", "hypothesis", "schemathesis"}
    for path in sorted(SRC.rglob("*.py")):
        if "testing" in path.relative_to(SRC).parts:
            continue  # the protocol fakes, used by tests and the benchmark only
        for name in imports(path):
            assert name.split(".")[0] not in dev_only, f"{path.relative_to(SRC)} imports {name}"
