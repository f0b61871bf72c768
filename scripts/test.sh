#!/usr/bin/env bash
# Set up (first run only) and run every check: ruff, ruff format, mypy, the whole pytest suite.
# Tests that need the research data (../shared/data), Chromium, Mosquitto or network namespaces (root + iproute2)
# skip, with the reason, when absent.
# Extra arguments go to pytest (e.g. `./scripts/test.sh -k honcho`).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "test.sh: installing chromium (for the browser test)" >&2
    apt-get update -q && apt-get install -y -q --no-install-recommends chromium
  else
    echo "test.sh: chromium is not installed and we are not root: the browser test will be skipped" >&2
  fi
fi

if ! command -v mosquitto >/dev/null && [[ ! -x /usr/sbin/mosquitto ]]; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "test.sh: installing mosquitto (the MQTT broker the event-stream test starts on a random port)" >&2
    apt-get update -q && apt-get install -y -q --no-install-recommends mosquitto
  else
    echo "test.sh: mosquitto is not installed and we are not root: the MQTT test will be skipped" >&2
  fi
fi

if ! command -v ip >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "test.sh: installing iproute2 (for the two-namespace CURVE test)" >&2
    apt-get update -q && apt-get install -y -q --no-install-recommends iproute2
  else
    echo "test.sh: ip (iproute2) is not installed and we are not root: the network-namespace test will be skipped" >&2
  fi
fi

if [[ ! -x .venv/bin/python ]]; then
  python="$(command -v python3.11 || command -v python3)"
  echo "test.sh: creating .venv ($("$python" --version))" >&2
  "$python" -m venv .venv
fi
stamp=.venv/.emostream-dev
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  echo "test.sh: pip install -e '.[dev,training]'" >&2
  .venv/bin/python -m pip install -q -e '.[dev,training]'
  touch "$stamp" .venv/.emostream-runtime
fi
export PATH="$PWD/.venv/bin:$PATH"

# Every check runs (one failure does not hide the next); the exit code is non-zero if any failed.
failed=()
check() {
  echo "test.sh: $*" >&2
  "$@" || failed+=("$1")
}
check ruff check .
check ruff format --check .
check mypy bus capture detector classifier display analyze training bench emostream
check pytest -q "$@"
if ((${#failed[@]})); then
  echo "test.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "test.sh: all checks passed" >&2
