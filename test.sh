#!/usr/bin/env bash
# Install everything the tests need, then run linters, type checks and every test.
# Extra arguments go to pytest (e.g. `./test.sh -k relay`).
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --editable '.[test]'

# The end-to-end tests drive the official JavaScript client with node, a real
# nginx in front of two nodes, and the example web app in Chromium. Install them
# from Debian where missing.
missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -x /usr/bin/chromium ] || missing+=(chromium)
# The deploy tests render deploy/compose with a compose client (no Docker engine needed).
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "test.sh: please install: ${missing[*]}" >&2
    exit 1
  fi
fi
(cd tests/e2e/js && npm ci --no-audit --no-fund --loglevel=error)
(cd web && npm ci --no-audit --no-fund --loglevel=error)

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# The web packages: strict TypeScript, then vitest (its tests start a real local stack with this venv).
(cd web && npm run typecheck && npm test)
# pytest exits 5 when it collected no test: with `set -e` that fails the run too.
.venv/bin/python -m pytest --cov=gateway --cov=collectors --cov=shared --cov-report=term:skip-covered "$@"
