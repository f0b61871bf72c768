#!/usr/bin/env bash
# Set up (first run only) and start the pipeline under honcho: capture -> detector -> classifier -> display.
#   SOURCE=<camera index | video | image | folder | URL>   what to read (default: bus.toml's camera 0)
#   EVENTS=<path>       also write one JSON line per frame
#   BUS_CONFIG=<path>   another bus.toml;   WEB=host:port ("" = off), VIDEO=<path.mp4>: see README.md
# Extra arguments go to `honcho start` (e.g. `./scripts/run.sh display` starts only the display).
set -euo pipefail
# The user's relative paths are relative to the user's folder, not to the repository we change into.
for var in SOURCE EVENTS VIDEO BUS_CONFIG; do
  value=${!var:-}
  [[ -z $value || $value == /* || $value == *://* || ($var == SOURCE && $value =~ ^[0-9]+$) ]] || export "$var=$PWD/$value"
done
cd "$(dirname "$0")/.."

if [[ ! -x .venv/bin/python ]]; then
  python="$(command -v python3.11 || command -v python3)"
  echo "run.sh: creating .venv ($("$python" --version))" >&2
  "$python" -m venv .venv
fi
# Runtime dependencies only (no TensorFlow); again whenever pyproject.toml changes.
stamp=.venv/.emostream-runtime
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  echo "run.sh: pip install -e . (runtime dependencies)" >&2
  .venv/bin/python -m pip install -q -e .
  touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"  # the Procfile says `python -m <stage>`: this venv's python
# One id per run: every stage stamps it on what it sends and refuses other runs' messages (a second
# pipeline on the same endpoints); set EMOSTREAM_RUN yourself to rejoin a run with one restarted stage.
export EMOSTREAM_RUN="${EMOSTREAM_RUN:-$(python -c 'import secrets; print(secrets.token_hex(8))')}"
# honcho's pid (exec keeps ours): every stage stops when it dies, even by SIGKILL (bus/runtime.py).
export EMOSTREAM_MANAGER_PID=$$
exec honcho start "$@"
