#!/usr/bin/env bash
# CI set-up of the review UI and its browser test (tests/e2e): Debian's Chromium, the OpenSeadragon
# build (npm ci in api/assets/ copies it into api/static/vendor/, git-ignored) and the Playwright driver.
# Playwright's own browser download is NOT used (no `playwright install`): the test launches
# /usr/bin/chromium. Idempotent; run from anywhere, with the project's venv active or at .venv/.
set -euo pipefail

PLAYWRIGHT_VERSION=1.65.2
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$(dirname "$here")")"

if [ ! -x /usr/bin/chromium ]; then
  echo "ci-setup: installing chromium (apt)"
  sudo_cmd=""
  if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
/usr/bin/chromium --version

echo "ci-setup: npm ci in api/assets/ (copies OpenSeadragon into api/static/vendor/openseadragon)"
(cd "$here" && npm ci --no-audit --no-fund)
test -f "$root/api/static/vendor/openseadragon/openseadragon.min.js"

python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python_bin="$root/.venv/bin/python"; else python_bin="python3"; fi
fi
echo "ci-setup: pip install playwright==$PLAYWRIGHT_VERSION"
"$python_bin" -m pip install -q "playwright==$PLAYWRIGHT_VERSION"
echo "ci-setup: done"
