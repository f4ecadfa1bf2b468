#!/bin/sh
# Installs Patroni (the failover benchmark's peer) into benchmarks/.patroni-venv. Idempotent.
#
# The venv is made from the system interpreter on purpose: Patroni runs as the postgres user,
# and a venv whose base interpreter lives under a directory postgres cannot read fails to start.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.patroni-venv"
python=${PATRONI_PYTHON:-/usr/bin/python3}

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import patroni, psycopg' 2>/dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'patroni[etcd3]' 'psycopg[binary]'
fi
chmod -R a+rX "$venv"
"$venv/bin/patroni" --version
