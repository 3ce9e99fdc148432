#!/usr/bin/env bash
# Prepare a checkout for development: system packages, .venv, and the Python dependencies.
#
# Usage: scripts/bootstrap.sh [bench]
#   bench  also install pgbouncer and the benchmark extras.
#
# Idempotent and silent when everything is already in place. Debian packages are
# installed with apt-get only when running as root; otherwise we say what is missing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The distribution's interpreter first: Debian builds /usr/bin/python3 with PGO and
# LTO and links libpython statically, and ecluse spends a third of its CPU in the
# interpreter, so it runs 5-8% less CPU per transaction on it than on a plain
# source build (pyenv's default) found first on PATH (bench/README.md).
# PYTHON=/path/to/python3.11 overrides.
pick_python() {
    local candidate
    for candidate in /usr/bin/python3 python3; do
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo python3
}
PYTHON="${PYTHON:-$(pick_python)}"
MIN_PG=15
bench=0
if [[ "${1:-}" == "bench" ]]; then
    bench=1
fi

say() { echo "bootstrap: $*"; }

apt_updated=0
apt_install() {
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        say "missing system packages: $* (install them as root: apt-get install -y $*)" >&2
        return 1
    fi
    if [[ "$apt_updated" == 0 ]]; then
        say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    say "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

have_pg_server() {
    local bindir version
    for bindir in /usr/lib/postgresql/*/bin; do
        version="${bindir#/usr/lib/postgresql/}"
        version="${version%/bin}"
        if [[ "$version" =~ ^[0-9]+$ ]] && (( version >= MIN_PG )) \
            && [[ -x "$bindir/initdb" && -x "$bindir/postgres" ]]; then
            return 0
        fi
    done
    return 1
}

ensure_postgres() {
    if have_pg_server && command -v psql >/dev/null 2>&1; then
        return 0
    fi
    # Debian 12 ships 15; elsewhere fall back to the distribution's default version.
    apt_install "postgresql-$MIN_PG" "postgresql-client-$MIN_PG" \
        || apt_install postgresql postgresql-client \
        || say "warning: PostgreSQL >= $MIN_PG is needed for make run and make test" >&2
}

ensure_pgbouncer() {
    if command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]]; then
        return 0
    fi
    apt_install pgbouncer || say "warning: pgbouncer is needed to compare against it" >&2
}

ensure_venv() {
    if [[ -x .venv/bin/python ]]; then
        return 0
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        say "$PYTHON is older than 3.11; set PYTHON=/path/to/python3.11" >&2
        exit 1
    fi
    say "creating .venv with $PYTHON"
    rm -rf .venv
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        # Debian's python3 has no ensurepip until python3-venv is installed.
        rm -rf .venv
        apt_install python3-venv
        "$PYTHON" -m venv .venv
    fi
    # The compiled accelerators need Python.h; without it ecluse runs as pure Python.
    if ! [[ -e "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("include"))')/Python.h" ]]; then
        apt_install python3-dev || say "warning: no Python.h; ecluse will run without its compiled accelerators" >&2
    fi
}

ensure_python_deps() {
    local extras="test"
    if [[ "$bench" == 1 ]]; then
        extras="test,bench"
    fi
    local stamp=".venv/.stamp-${extras/,/-}"
    if [[ -e "$stamp" && ! pyproject.toml -nt "$stamp" && ! setup.py -nt "$stamp" ]]; then
        # The compiled accelerators (setup.py) are rebuilt when a .pyx or .pxd changed.
        if [[ -z "$(find src \( -name '*.pyx' -o -name '*.pxd' \) -newer "$stamp" -print -quit)" ]]; then
            return 0
        fi
        say "rebuilding ecluse's compiled accelerators"
        .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
        touch "$stamp"
        return 0
    fi
    say "installing ecluse in .venv with extras [$extras]"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
    # A real consumer of PgBouncer's console, run against ecluse by the tests. Without
    # its dependencies: it pins psycopg2==2.8.5, which does not build on Python 3.11;
    # what it needs at run time is in the test extra.
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
        prometheus-pgbouncer-exporter==2.1.2
    touch "$stamp"
}

ensure_postgres
if [[ "$bench" == 1 ]]; then
    ensure_pgbouncer
fi
ensure_venv
ensure_python_deps
