#!/usr/bin/env bash
# Start the pipeline under supervisord (deploy/supervisord.conf: a crashed stage is restarted alone, a
# start-up failure is left FATAL), in the foreground; Ctrl-C or SIGTERM stops every stage.
#   ./scripts/supervisord.sh                 start (BUS_CONFIG, SOURCE, EVENTS, WEB, VIDEO as for run.sh)
#   ./scripts/supervisord.sh ctl status      supervisorctl on the running one (restart detector, shutdown, ...)
# Extra arguments go to supervisord; SUPERVISORD_CONF=<path> runs another config.
set -euo pipefail
# The user's relative paths are relative to the user's folder, not to the repository we change into.
for var in SOURCE EVENTS VIDEO BUS_CONFIG SUPERVISORD_CONF; do
  value=${!var:-}
  [[ -z $value || $value == /* || $value == *://* || ($var == SOURCE && $value =~ ^[0-9]+$) ]] || export "$var=$PWD/$value"
done
cd "$(dirname "$0")/.."
[[ -x .venv/bin/python ]] && export PATH="$PWD/.venv/bin:$PATH"  # the config says `python -m <stage>`
conf=${SUPERVISORD_CONF:-deploy/supervisord.conf}
# supervisord's socket and pid file go in the stages' private runtime dir (made 0700, owner checked)
EMOSTREAM_RUNTIME_DIR="$(python -c 'from bus.runtime import runtime_dir; print(runtime_dir())')"
export EMOSTREAM_RUNTIME_DIR
if [[ ${1:-} == ctl ]]; then
  shift
  exec supervisorctl -c "$conf" "$@"
fi
# One id per run (restarted stages keep it: a restarted capture resumes, a restarted display keeps the
# ledger, other runs' messages are refused) and supervisord's pid (exec keeps ours): every stage stops
# when it dies, even by SIGKILL (bus/runtime.py).
export EMOSTREAM_RUN="${EMOSTREAM_RUN:-$(python -c 'import secrets; print(secrets.token_hex(8))')}"
export EMOSTREAM_MANAGER_PID=$$
exec supervisord -n -c "$conf" "$@"
