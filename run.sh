#!/usr/bin/env bash
# Try edgecap on this machine, no install: it captions the camera if there is one, else the bundled
# sample photos, and serves the page on http://127.0.0.1:8080 (stop with Ctrl-C).
#   ./run.sh                                  defaults
#   ./run.sh --port 8081 --interval 2         flags of `edgecap run` pass through (edgecap run --help)
#   ./run.sh --folder ~/incoming              caption photos as they arrive in a folder
# The first start makes a virtual environment in .venv with edgecap in it; an existing .venv is used
# as it is. Every `edgecap` command then is .venv/bin/edgecap (`. .venv/bin/activate` puts it on
# PATH) and uses the same data folder: ~/.local/share/edgecap, or $EDGECAP_DATA_DIR.
# For a Raspberry Pi or Jetson service, use install.sh instead.
set -euo pipefail
cd "$(dirname "$0")"
if [[ ! -x .venv/bin/edgecap ]]; then
    echo "run.sh: installing edgecap into .venv (once; needs PyPI)" >&2
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e .
fi
echo "run.sh: the edgecap command is $PWD/.venv/bin/edgecap; '. .venv/bin/activate' puts it on PATH" >&2
exec .venv/bin/edgecap run "$@"
