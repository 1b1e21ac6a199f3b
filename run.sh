#!/usr/bin/env bash
# Try edgecap on this machine, no install: it captions the camera if there is one, else the bundled
# sample photos, and serves the page on http://127.0.0.1:8080 (stop with Ctrl-C).
#   ./run.sh                       defaults
#   ./run.sh --interval 2          flags of `edgecap run` pass through
# For a Raspberry Pi or Jetson service, use install.sh instead.
set -euo pipefail
cd "$(dirname "$0")"
if [[ ! -x .venv/bin/edgecap ]]; then
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e .
fi
exec .venv/bin/edgecap --data-dir "${EDGECAP_DATA_DIR:-data}" run "$@"
