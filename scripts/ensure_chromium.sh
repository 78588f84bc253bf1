#!/usr/bin/env bash
# The dashboard's browser tests (tests/test_dashboard_browser.py) drive Debian's chromium through
# Playwright, never a browser that Playwright downloads. Install the distribution's package when it
# is missing (as root, or with password-less sudo); otherwise say so and let the tests skip.
set -u
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "warning: chromium not found and not root (no password-less sudo); the dashboard browser tests will be skipped" >&2
    exit 0
  fi
fi
if command -v apt-get >/dev/null 2>&1; then
  ($SUDO apt-get install -y -q chromium >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium >/dev/null 2>&1; }) \
    || echo "warning: could not install chromium with apt-get; the dashboard browser tests will be skipped" >&2
else
  echo "warning: chromium not found and no apt-get here; the dashboard browser tests will be skipped" >&2
fi
exit 0
