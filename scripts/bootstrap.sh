#!/usr/bin/env bash
# Installs what Telepath needs on a fresh machine, and nothing twice:
#   - a Python venv in .venv with the package (editable) and, with --test, its dev extras
#     (python3.X-venv via apt-get first when Python cannot make a venv without it);
#   - with --test, the Debian packages the interop tests drive as real peers (SIPp, baresip,
#     linphone, kamailio as a record-routing proxy, dnsmasq as a DNS server with SRV/NAPTR,
#     coturn as a STUN server),
#     via apt-get when they are missing and we may install them.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

# Root, or passwordless sudo when there is one (never a password prompt); else as we are.
sudo=""
[ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo -n"

pick_python() {
  for py in python3.13 python3.12 python3.11 python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "$py"; return 0
    fi
  done
  echo "Telepath needs Python >= 3.11" >&2; return 1
}

# A venv is one whose pip runs: stock Debian ships venv's ensurepip apart (python3.X-venv), and
# there 'python3 -m venv' makes bin/python, then fails. Taken for a venv, that half-made one
# failed every later run ("No module named pip"), even once the package was installed.
venv_works() {
  [ -x .venv/bin/python ] && .venv/bin/python -m pip --version >/dev/null 2>&1
}

make_venv() {
  rm -rf .venv
  "$1" -m venv .venv || { rm -rf .venv; return 1; }
}

if ! venv_works; then
  [ -e .venv ] && echo "bootstrap: .venv has no working pip (made half-way?): making it again" >&2
  py="$(pick_python)"
  if ! make_venv "$py"; then
    venv_pkg="python$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"
    if command -v apt-get >/dev/null 2>&1; then
      echo "bootstrap: '$py -m venv' failed; installing $venv_pkg with apt-get" >&2
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq || true
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$venv_pkg" >/dev/null || true
    fi
    if ! make_venv "$py"; then
      echo "bootstrap: ERROR '$py -m venv .venv' failed: Python's venv module is missing." >&2
      echo "bootstrap: install it (Debian/Ubuntu: sudo apt-get install -y $venv_pkg), then run" \
        "this again" >&2
      exit 1
    fi
  fi
  .venv/bin/python -m pip install -q --upgrade pip
fi

extras=""
[ $want_test = 1 ] && extras="[dev]"
stamp=".venv/.installed${extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q -e ".${extras}"
  touch "$stamp"
fi

if [ $want_test = 1 ]; then
  missing=()
  command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
  command -v baresip >/dev/null 2>&1 || missing+=(baresip-core)
  command -v kamailio >/dev/null 2>&1 || missing+=(kamailio)
  command -v linphonec >/dev/null 2>&1 || missing+=(linphone-cli)
  command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
  command -v turnserver >/dev/null 2>&1 || missing+=(coturn)
  if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
      echo "bootstrap: installing ${missing[*]} with apt-get" >&2
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq || true
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
        || echo "bootstrap: WARNING could not install ${missing[*]}; interop tests will be skipped loudly" >&2
      # The tests run their own kamailio on a loopback port; the packaged service (port 5060 on
      # every interface, where `make run` listens) must not stay up where systemd started it.
      if [[ " ${missing[*]} " == *" kamailio "* ]] && command -v systemctl >/dev/null 2>&1; then
        $sudo systemctl disable --now kamailio >/dev/null 2>&1 || true
      fi
      # Likewise coturn's service (port 3478): the tests run their own STUN server.
      if [[ " ${missing[*]} " == *" coturn "* ]] && command -v systemctl >/dev/null 2>&1; then
        $sudo systemctl disable --now coturn >/dev/null 2>&1 || true
      fi
    else
      echo "bootstrap: WARNING no apt-get; interop tests need ${missing[*]} and will be skipped loudly" >&2
    fi
  fi
fi
