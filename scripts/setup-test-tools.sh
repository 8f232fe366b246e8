#!/usr/bin/env bash
# Installs what the tests need, if missing or out of date:
#   ./.venv                 pinned Python tools (tools/requirements.txt + tools/constraints.txt):
#                           mesh-sandbox, mesh-client, fhir.resources, grpcurl
#   ./tools/node_modules    buf (npm @bufbuild/buf, pinned in tools/package-lock.json)
#   chromium, chromedriver  Debian chromium + chromium-driver (apt, as root) for the console browser tests
# Idempotent: a stamp file holds the hash of the pins, so a second run is instant.
set -euo pipefail
cd "$(dirname "$0")/.."

stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

py_stamp=$(stamp_of tools/requirements.txt tools/constraints.txt)
if [ "$(cat .venv/.nems-stamp 2>/dev/null)" != "$py_stamp" ]; then
  echo "setup: installing the Python test tools into .venv"
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check \
    -r tools/requirements.txt -c tools/constraints.txt
  echo "$py_stamp" > .venv/.nems-stamp
fi

node_stamp=$(stamp_of tools/package.json tools/package-lock.json)
if [ "$(cat tools/node_modules/.nems-stamp 2>/dev/null)" != "$node_stamp" ]; then
  echo "setup: installing buf into tools/node_modules"
  (cd tools && npm install --no-audit --no-fund --loglevel=error)
  echo "$node_stamp" > tools/node_modules/.nems-stamp
fi

# The console's browser tests drive Debian's Chromium through its chromedriver.
if ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing chromium and chromium-driver (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver >/dev/null
  else
    echo "setup: chromium and chromium-driver are missing; install them (apt-get install chromium chromium-driver) or the console browser tests fail" >&2
  fi
fi
