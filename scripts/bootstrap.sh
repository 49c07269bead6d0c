#!/usr/bin/env bash
# Install what StudyHub needs and is missing: uv (from PyPI, with pip), the Debian packages
# postgresql-15, pgbouncer, postgresql-15-hypopg and, with --tests, chromium (browser tests) and
# age (a backup set must decrypt with the stock age CLI); then the
# Python environment (uv sync).
# Idempotent: when everything is present it only checks, and returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_MAJOR=15
need_pkgs=()
[ -x "/usr/lib/postgresql/$PG_MAJOR/bin/postgres" ] || need_pkgs+=("postgresql-$PG_MAJOR" "postgresql-contrib")
[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1 || need_pkgs+=(pgbouncer)
[ -f "/usr/share/postgresql/$PG_MAJOR/extension/hypopg.control" ] || need_pkgs+=("postgresql-$PG_MAJOR-hypopg")
command -v zstd >/dev/null 2>&1 || need_pkgs+=(zstd)
# Test dependency (scripts/test passes --tests): the dashboard's browser tests drive Debian's
# Chromium, never a downloaded one. The demo does not need it.
if [ "${1:-}" = "--tests" ]; then
  [ -x /usr/bin/chromium ] || need_pkgs+=(chromium)
  # Debian's age: the test that decrypts an encrypted backup set by hand, as docs/backup.md shows
  command -v age >/dev/null 2>&1 || need_pkgs+=(age)
fi

if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "bootstrap: installing Debian packages: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Debian's postgresql-common creates a default cluster on install; we never use it.
    mkdir -p /etc/postgresql-common
    if [ ! -f /etc/postgresql-common/createcluster.conf ] || ! grep -q '^create_main_cluster' /etc/postgresql-common/createcluster.conf; then
      echo "create_main_cluster = false" >> /etc/postgresql-common/createcluster.conf
    fi
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  else
    echo "bootstrap: missing Debian packages: ${need_pkgs[*]}" >&2
    echo "bootstrap: run as root:  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y ${need_pkgs[*]}" >&2
    exit 1
  fi
fi

# pgbouncer's Debian package starts a system service on port 6432; we run our own instances.
if [ "$(id -u)" -eq 0 ] && command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet pgbouncer 2>/dev/null; then
  systemctl stop pgbouncer || true
fi

# uv: use the one on PATH, else install it with pip into .tools/ (pip --target works even where
# Debian marks the system Python as externally managed).
UV="$(command -v uv || true)"
if [ -z "$UV" ]; then
  UV="$PWD/.tools/bin/uv"
  if [ ! -x "$UV" ]; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
      if [ "$(id -u)" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
      else
        echo "bootstrap: python3 has no pip; run: sudo apt-get install -y python3-pip" >&2
        exit 1
      fi
    fi
    echo "bootstrap: installing uv into .tools/"
    python3 -m pip install --quiet --disable-pip-version-check --target "$PWD/.tools" uv
  fi
fi
"$UV" sync --quiet --frozen
