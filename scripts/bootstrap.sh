#!/usr/bin/env bash
# Set up a fresh machine for this project: the Python virtualenv and, with --services, the PostgreSQL and
# Redis binaries the tests start (they run nothing as a daemon; tests start and stop their own instances).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

want_services=0
[[ "${1:-}" == "--services" ]] && want_services=1

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' 2>/dev/null; then
  echo "bootstrap: Python 3.11+ is required (found: $("$python" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "bootstrap: creating .venv"
  "$python" -m venv .venv
fi
stamp=.venv/.requirements-installed
if [[ ! -f $stamp || requirements.txt -nt $stamp || requirements-dev.txt -nt $stamp ]]; then
  echo "bootstrap: installing requirements-dev.txt into .venv (a few minutes on a fresh machine)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements-dev.txt
  touch "$stamp"
fi

if (( want_services )); then
  have_pg=0; ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && have_pg=1
  have_redis=0; command -v redis-server >/dev/null 2>&1 && have_redis=1
  if (( !have_pg || !have_redis )); then
    if [[ $(id -u) -ne 0 ]]; then
      echo "bootstrap: the tests need PostgreSQL and Redis binaries: sudo apt-get install -y postgresql redis-server" >&2
      exit 1
    fi
    echo "bootstrap: installing postgresql and redis-server (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql redis-server >/dev/null
  fi
  # The Debian packages start system-wide daemons on install; the tests use their own instances instead.
  if command -v service >/dev/null 2>&1; then
    service postgresql stop >/dev/null 2>&1 || true
    service redis-server stop >/dev/null 2>&1 || true
  fi
fi
