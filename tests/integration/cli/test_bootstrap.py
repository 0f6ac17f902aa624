"""``scripts/bootstrap.sh`` on a machine whose Python cannot make a venv yet.

Stock Debian ships ``venv``'s ``ensurepip`` apart (``python3-venv``): there ``python3 -m venv``
makes ``bin/python``, then fails. The script used to take any ``.venv/bin/python`` for a venv
and died at every later run with "No module named pip", even once the package was installed,
until ``.venv`` was deleted by hand.

Run on a copy of the script, against stand-ins on ``PATH``: a ``python3`` whose ``-m venv``
works or fails like that (everything else goes to this interpreter), the venv's ``python``
(``pip`` there or not, for good, as in a real half-made venv), and ``apt-get``/``sudo`` that
only write down what they were asked. Nothing is installed; no real venv is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).parents[3] / "scripts" / "bootstrap.sh"
VENV_PACKAGE = f"python{sys.version_info[0]}.{sys.version_info[1]}-venv"

_PYTHON = """#!/usr/bin/env bash
# python3's stand-in: '-m venv DIR' as the state file says; anything else: the real one
echo "python3 $*" >> {log}
if [ "$1" = -m ] && [ "$2" = venv ]; then
  dir="${{@: -1}}"
  ok=$(cat {state})
  mkdir -p "$dir/bin"
  # the venv's python: pip there or not, for good (ensurepip ran or failed)
  cat > "$dir/bin/python" <<EOF
#!/usr/bin/env bash
echo "venv-python \\$*" >> {log}
if [ "\\$1" = -m ] && [ "\\$2" = pip ] && [ "$ok" != ok ]; then
  echo "$dir/bin/python: No module named pip" >&2
  exit 1
fi
exit 0
EOF
  chmod +x "$dir/bin/python"
  if [ "$ok" != ok ]; then
    echo "Error: Command '[\\"$dir/bin/python\\", \\"-m\\", \\"ensurepip\\"]' returned" \\
      "non-zero exit status 1." >&2
    exit 1
  fi
  exit 0
fi
exec {real} "$@"
"""

_APT_GET = """#!/usr/bin/env bash
echo "apt-get $*" >> {log}
if [ "$1" = install ]; then
  {install}
fi
exit 0
"""

_SUDO = """#!/usr/bin/env bash
echo "sudo $*" >> {log}
[ "$1" = -n ] && shift
exec "$@"
"""


@dataclass
class Machine:
    """A project copy and the stand-ins its bootstrap runs against."""

    project: Path
    shims: Path
    state: Path
    log: Path

    def venv_works_from_now_on(self) -> None:
        """``python3-venv`` is there now (installed by hand, say)."""
        self.state.write_text("ok")

    def bootstrap(self) -> subprocess.CompletedProcess[str]:
        self.log.write_text("")
        env = {**os.environ, "PATH": f"{self.shims}:/usr/bin:/bin"}
        return subprocess.run(
            ["bash", str(self.project / "scripts" / "bootstrap.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


def _machine(tmp_path: Path, *, apt_installs_venv: bool) -> Machine:
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, project / "scripts" / "bootstrap.sh")
    (project / "pyproject.toml").write_text("[project]\nname = 'stand-in'\n")
    shims = tmp_path / "bin"
    shims.mkdir()
    state = tmp_path / "venv-state"
    state.write_text("broken")
    log = tmp_path / "calls.log"
    python = _PYTHON.format(log=log, state=state, real=sys.executable)
    # the script tries python3.13, 3.12, 3.11, then python3: each finds the stand-in first
    for name in ("python3.13", "python3.12", "python3.11", "python3"):
        (shims / name).write_text(python)
    # an apt-get that can install the venv package, or one that fails to (no such package)
    install = f"echo ok > {state}" if apt_installs_venv else 'echo "E: no package" >&2; exit 100'
    (shims / "apt-get").write_text(_APT_GET.format(log=log, install=install))
    (shims / "sudo").write_text(_SUDO.format(log=log))
    for shim in shims.iterdir():
        shim.chmod(0o755)
    return Machine(project, shims, state, log)


def test_a_venv_python_could_not_finish_is_made_again_next_time(tmp_path: Path) -> None:
    machine = _machine(tmp_path, apt_installs_venv=False)

    first = machine.bootstrap()
    assert first.returncode != 0
    # said plainly, with what to install (after it tried to itself)
    assert f"apt-get install -y {VENV_PACKAGE}" in first.stderr, first.stderr
    assert any(f"install -y -qq {VENV_PACKAGE}" in c for c in machine.calls()), machine.calls()

    machine.venv_works_from_now_on()
    second = machine.bootstrap()
    assert second.returncode == 0, second.stderr
    calls = machine.calls()
    assert "python3 -m venv .venv" in calls  # made again, not the half-made one reused
    assert "venv-python -m pip install -q -e ." in calls
    assert (machine.project / ".venv" / ".installed").exists()

    third = machine.bootstrap()  # and nothing twice
    assert third.returncode == 0, third.stderr
    assert not any("-m venv" in c or "pip install" in c for c in machine.calls()), machine.calls()


def test_a_half_made_venv_left_by_an_earlier_run_is_not_reused(tmp_path: Path) -> None:
    machine = _machine(tmp_path, apt_installs_venv=False)
    # what the previous version of the script left behind
    subprocess.run(
        [str(machine.shims / "python3"), "-m", "venv", str(machine.project / ".venv")],
        capture_output=True,
        check=False,
    )
    assert (machine.project / ".venv" / "bin" / "python").exists()
    machine.venv_works_from_now_on()
    result = machine.bootstrap()
    assert result.returncode == 0, result.stderr
    assert "python3 -m venv .venv" in machine.calls()


def test_the_venv_package_is_installed_when_missing(tmp_path: Path) -> None:
    machine = _machine(tmp_path, apt_installs_venv=True)
    result = machine.bootstrap()
    assert result.returncode == 0, result.stderr
    calls = machine.calls()
    installs = [c for c in calls if c.startswith("apt-get install")]
    assert installs == [f"apt-get install -y -qq {VENV_PACKAGE}"], calls
    # the failed attempt, then the one after the install
    assert calls.count("python3 -m venv .venv") == 2, calls
    assert "venv-python -m pip install -q -e ." in calls
