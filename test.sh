#!/usr/bin/env bash
# Run the whole test suite on a fresh Debian machine: installs what the tests need, then pytest.
#   ./test.sh            all tests
#   ./test.sh -k web     pytest arguments pass through
set -euo pipefail
cd "$(dirname "$0")"

# System packages: headless Chromium for the browser test, shellcheck and systemd-analyze for the
# install checks, Java for METEOR, Mosquitto (a real MQTT broker) and openssl (its TLS certificates)
# for the MQTT tests, npm for axe-core (the page's accessibility and contrast check).
# Only installed when missing and we are root.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
command -v openssl >/dev/null || missing+=(openssl)
command -v npm >/dev/null || missing+=(npm)
command -v shellcheck >/dev/null || missing+=(shellcheck)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v java >/dev/null || missing+=(default-jre-headless)
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "test.sh: missing ${missing[*]} (apt-get install them); their tests will be skipped" >&2
    fi
fi

# axe-core runs inside the browser test's Chromium; kept in tests/axe (gitignored), fetched once.
if [[ ! -f tests/axe/node_modules/axe-core/axe.min.js ]] && command -v npm >/dev/null; then
    npm install --silent --no-save --no-package-lock --no-audit --no-fund --prefix tests/axe axe-core@4 \
        || echo "test.sh: could not install axe-core; the accessibility check will be skipped" >&2
fi

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[dev,converters]"
exec .venv/bin/python -m pytest "$@"
