#!/usr/bin/env bash
# The Redis state-store tests use a real redis-server (never a mock). Install it from the
# distribution's packages when it is missing; the tests start their own instance on a free port.
set -u
if command -v redis-server >/dev/null 2>&1; then exit 0; fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  (apt-get install -y -q redis-server >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q redis-server >/dev/null 2>&1; }) \
    || echo "warning: could not install redis-server; Redis tests will be skipped" >&2
else
  echo "warning: redis-server not found and cannot be installed here; Redis tests will be skipped" >&2
fi
exit 0
