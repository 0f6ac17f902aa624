"""The architecture as a test: pure cores stay pure, the hot path never imports the outer ring."""

from __future__ import annotations

import ast
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
