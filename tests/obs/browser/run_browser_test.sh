#!/usr/bin/env bash
# The dashboard's browser test (dashboard_browser_test.mjs) as a ctest case:
# skips (exit 77) when Chromium or Node.js is missing, installs the pinned
# playwright-core (package.json) into this folder's node_modules/ (gitignored)
# once, and runs the test.
# Usage: run_browser_test.sh DTRAIN_BINARY ARTIFACT_DIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
chromium="${DTRAIN_CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "$chromium" ]]; then
  echo "SKIP: no Chromium at $chromium (apt-get install chromium, or set DTRAIN_CHROMIUM)"
  exit 77
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "SKIP: node and npm are needed to drive Chromium (apt-get install nodejs npm)"
  exit 77
fi
want=$(node -p "require('$here/package.json').dependencies['playwright-core']")
have=$(node -p "try { require('$here/node_modules/playwright-core/package.json').version } catch { '' }")
if [[ "$have" != "$want" ]]; then
  echo "installing playwright-core $want into $here/node_modules"
  if ! (cd "$here" && npm install --no-audit --no-fund --ignore-scripts >/dev/null 2>&1); then
    echo "SKIP: npm could not install playwright-core $want (offline?)"
    exit 77
  fi
fi
exec node "$here/dashboard_browser_test.mjs" "$1" "$2" "$chromium"
