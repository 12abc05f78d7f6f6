#!/usr/bin/env bash
# Set up once, then run the whole system on this host: an embedded Redis,
# gateway node(s), exchange collectors (fed by the simulator when the real
# exchanges are out of reach). Extra arguments go to `fanout-local`.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --editable .
exec .venv/bin/fanout-local "$@"
