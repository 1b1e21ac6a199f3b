#!/usr/bin/env bash
# edgecap installer: a headless captioning camera in one command.
#
#   sudo ./install.sh             install (or update) the system service and start it
#   ./install.sh --user           no root: everything under your home, a systemd --user service
#   sudo ./install.sh --uninstall remove it (keeps the captures and config; add --purge to delete them)
#
# Idempotent: a second run with nothing changed changes nothing. See docs/install.md and --help.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly REPO
readonly MIN_PYTHON_MINOR=11      # pyproject.toml: requires-python >= 3.11
readonly SERVICE_USER="edgecap"
readonly DEFAULT_PORT=8080

# Options
MODE="install"            # install | uninstall | stop | reset-password
USER_MODE=0
PURGE=0
START=1
PREFIX=""
PORT=""
CAMERA=""
PYTHON=""

# Set by detect_platform
PLATFORM=""               # pi | jetson | debian | other
PLATFORM_DESC=""
USERLAND_BITS=64
RUNTIME=""                # ai-edge-litert | tflite-runtime

# Set by layout
APP_DIR="" VENV="" MODELS_DIR="" CONF_DIR="" CONF_FILE="" DATA_DIR="" CACHE_DIR="" RUN_DIR="" LOG_FILE=""
PID_FILE="" BIN_LINK="" UNIT_FILE="" STAMP=""
SYSTEMD=0                 # 1 when a systemd manager (system, or the user's for --user) is running here
CHANGED=0                 # 1 when this run changed something the running service uses
NEW_PASSWORD=""

say() { printf '%s\n' "$*"; }
step() { printf '==> %s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<'EOF'
Usage: install.sh [options]

Installs edgecap as a service that captions what the camera sees and serves its search page,
starts it, waits until the page answers and prints its address. Run it again to update.

Options:
  --user            install for the current user without root: ~/.local/share/edgecap,
                    ~/.config/edgecap/config.toml, a systemd --user service (if one runs)
  --prefix DIR      put everything (program, models, config, captures, log) under DIR
                    (default: /opt/edgecap, /etc/edgecap, /var/lib/edgecap)
  --no-start        install, but do not enable or start the service
  --port N          web port written to a new config (default 8080)
  --camera SOURCE   camera written to a new config: auto (default), picamera2, usb, jetson,
                    samples, folder:DIR or stream:URL
  --python PATH     the Python (>= 3.11) to build the virtual environment from
  --reset-password  generate a new web password (printed once) and restart the service
  --stop            stop edgecap started in the background (machines without systemd)
  --print-unit      print the systemd unit this installation would get (for systemd/check.sh)
  --uninstall       stop and remove edgecap; keeps the captures and the config
  --purge           with --uninstall: also delete the captures, the config and the edgecap user
  -h, --help        this help

Environment:
  EDGECAP_PIP_ARGS  extra arguments for pip (e.g. "--index-url URL" or "--no-index --find-links DIR")
  EDGECAP_WAIT      seconds to wait for the page to answer after starting (default 300)
EOF
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --user) USER_MODE=1 ;;
            --prefix) [[ $# -ge 2 ]] || die "--prefix needs a directory"; PREFIX="$2"; shift ;;
            --prefix=*) PREFIX="${1#*=}" ;;
            --no-start) START=0 ;;
            --port) [[ $# -ge 2 ]] || die "--port needs a number"; PORT="$2"; shift ;;
            --port=*) PORT="${1#*=}" ;;
            --camera) [[ $# -ge 2 ]] || die "--camera needs a source"; CAMERA="$2"; shift ;;
            --camera=*) CAMERA="${1#*=}" ;;
            --python) [[ $# -ge 2 ]] || die "--python needs a path"; PYTHON="$2"; shift ;;
            --python=*) PYTHON="${1#*=}" ;;
            --reset-password) MODE="reset-password" ;;
            --print-unit) MODE="print-unit" ;;
            --stop) MODE="stop" ;;
            --uninstall) MODE="uninstall" ;;
            --purge) PURGE=1 ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown option $1 (see --help)" ;;
        esac
        shift
    done
    if [[ $PURGE -eq 1 && $MODE != "uninstall" ]]; then die "--purge goes with --uninstall"; fi
    if [[ -n "$PORT" ]] && ! [[ "$PORT" =~ ^[0-9]+$ && "$PORT" -ge 1 && "$PORT" -le 65535 ]]; then
        die "--port must be a number from 1 to 65535, got '$PORT'"
    fi
    if [[ -n "$CAMERA" ]]; then camera_lines > /dev/null; fi
    if [[ -n "$PREFIX" ]]; then
        [[ "$PREFIX" == /* ]] || PREFIX="$PWD/$PREFIX"
        PREFIX="${PREFIX%/}"
        [[ -n "$PREFIX" ]] || die "--prefix / is not allowed"
    fi
}

is_root() { [[ $(id -u) -eq 0 ]]; }

# This script as the user should type it again, with the options that pick the same installation.
self_cmd() {
    local cmd="$0"
    if [[ $USER_MODE -eq 0 && $(id -u) -eq 0 && -n "${SUDO_USER:-}" ]]; then cmd="sudo $cmd"; fi
    [[ $USER_MODE -eq 1 ]] && cmd="$cmd --user"
    [[ -n "$PREFIX" ]] && cmd="$cmd --prefix $PREFIX"
    printf '%s' "$cmd"
}

# ---------------------------------------------------------------------------------------------------
# Where things go

layout() {
    if [[ $USER_MODE -eq 1 ]]; then
        local data_home="${XDG_DATA_HOME:-$HOME/.local/share}" config_home="${XDG_CONFIG_HOME:-$HOME/.config}"
        if [[ -n "$PREFIX" ]]; then
            prefix_layout
        else
            APP_DIR="$data_home/edgecap"
            CONF_DIR="$config_home/edgecap"
            DATA_DIR="$data_home/edgecap/data"
            CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/edgecap"
            RUN_DIR="$APP_DIR/run"
            LOG_FILE="$APP_DIR/log/edgecap.log"
            BIN_LINK="$HOME/.local/bin/edgecap"
        fi
        UNIT_FILE="$config_home/systemd/user/edgecap.service"
    else
        if [[ -n "$PREFIX" ]]; then
            prefix_layout
        else
            APP_DIR="/opt/edgecap"
            CONF_DIR="/etc/edgecap"
            DATA_DIR="/var/lib/edgecap"
            CACHE_DIR="/var/cache/edgecap"
            RUN_DIR="/run/edgecap"
            LOG_FILE="/var/log/edgecap/edgecap.log"
            BIN_LINK="/usr/local/bin/edgecap"
        fi
        UNIT_FILE="/etc/systemd/system/edgecap.service"
    fi
    VENV="$APP_DIR/venv"
    MODELS_DIR="$APP_DIR/models"
    CONF_FILE="$CONF_DIR/config.toml"
    PID_FILE="$RUN_DIR/edgecap.pid"
    STAMP="$VENV/.edgecap-install-stamp"
}

# --prefix DIR: one self-contained folder. No link in PATH: the CLI is DIR/venv/bin/edgecap.
prefix_layout() {
    APP_DIR="$PREFIX"
    CONF_DIR="$PREFIX/etc"
    DATA_DIR="$PREFIX/data"
    CACHE_DIR="$PREFIX/cache"
    RUN_DIR="$PREFIX/run"
    LOG_FILE="$PREFIX/log/edgecap.log"
    BIN_LINK=""
}

detect_systemd() {
    SYSTEMD=0
    if [[ $USER_MODE -eq 1 ]]; then
        if command -v systemctl >/dev/null 2>&1 && systemctl --user show-environment >/dev/null 2>&1; then
            SYSTEMD=1
        fi
    elif [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        SYSTEMD=1
    fi
}

# ---------------------------------------------------------------------------------------------------
# What are we running on

os_release() { # KEY -> value from /etc/os-release, or empty
    local key="$1"
    [[ -r /etc/os-release ]] || return 0
    # shellcheck disable=SC1091
    (. /etc/os-release && eval "printf '%s' \"\${$key:-}\"")
}

detect_platform() {
    local model="" os_id os_like codename pretty machine dpkg_arch=""
    os_id="$(os_release ID)"
    os_like="$(os_release ID_LIKE)"
    codename="$(os_release VERSION_CODENAME)"
    pretty="$(os_release PRETTY_NAME)"
    machine="$(uname -m)"
    if command -v dpkg >/dev/null 2>&1; then dpkg_arch="$(dpkg --print-architecture)"; fi
    USERLAND_BITS="$(getconf LONG_BIT 2>/dev/null || echo 64)"
    if [[ -r /proc/device-tree/model ]]; then model="$(tr -d '\0' < /proc/device-tree/model)"; fi

    if [[ "$model" == Raspberry\ Pi* ]]; then
        PLATFORM="pi"
        PLATFORM_DESC="$model, ${pretty:-unknown OS}"
        case "$codename" in
            bookworm|trixie) ;;
            *) warn "Raspberry Pi OS '${codename:-?}' is not tested; Bookworm and Trixie are" ;;
        esac
    elif [[ -r /etc/nv_tegra_release ]]; then
        PLATFORM="jetson"
        local release revision jetpack
        release="$(sed -n 's/^# R\([0-9]*\) (release).*/\1/p' /etc/nv_tegra_release)"
        revision="$(sed -n 's/.*REVISION: \([0-9.]*\).*/\1/p' /etc/nv_tegra_release)"
        case "$release" in
            35) jetpack="JetPack 5" ;;
            36) jetpack="JetPack 6" ;;
            *) jetpack="JetPack ?"; warn "L4T R${release:-?} is not tested; JetPack 5 (R35) and 6 (R36) are" ;;
        esac
        PLATFORM_DESC="${model:-Jetson}, L4T R${release:-?}.${revision:-?} ($jetpack), ${pretty:-unknown OS}"
    elif [[ "$os_id" == "debian" || "$os_id" == "ubuntu" || "$os_like" == *debian* ]]; then
        PLATFORM="debian"
        PLATFORM_DESC="${pretty:-Debian}"
    else
        PLATFORM="other"
        PLATFORM_DESC="${pretty:-unknown OS} (not Debian-based: install python3-venv yourself)"
    fi
    PLATFORM_DESC="$PLATFORM_DESC, ${USERLAND_BITS}-bit userland (${dpkg_arch:-$machine}, kernel $machine)"
}

# ---------------------------------------------------------------------------------------------------
# Packages and Python

apt_missing() { # prints the packages of "$@" that are not installed
    local pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            printf '%s\n' "$pkg"
        fi
    done
}

install_apt_packages() {
    local wanted=() missing=()
    command -v apt-get >/dev/null 2>&1 || return 0
    # python3-venv brings ensurepip for the system Python; picamera2 only comes from apt on a Pi.
    if [[ -z "$PYTHON" || "$PYTHON" == /usr/bin/python3* ]]; then wanted+=(python3-venv); fi
    if [[ "$PLATFORM" == "pi" ]]; then wanted+=(python3-picamera2); fi
    [[ ${#wanted[@]} -gt 0 ]] || return 0
    mapfile -t missing < <(apt_missing "${wanted[@]}")
    [[ ${#missing[@]} -gt 0 ]] || return 0
    if ! is_root; then
        die "missing packages: ${missing[*]}. Install them with: sudo apt-get install ${missing[*]}"
    fi
    step "Installing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --no-install-recommends: picamera2 otherwise pulls in the desktop preview stack (Qt, OpenGL).
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pick_python() {
    if [[ -z "$PYTHON" ]]; then
        # The distribution's Python: the one apt's picamera2 and JetPack's OpenCV are built for.
        if [[ -x /usr/bin/python3 ]]; then PYTHON=/usr/bin/python3; else PYTHON="$(command -v python3 || true)"; fi
    fi
    [[ -n "$PYTHON" && -x "$PYTHON" ]] || die "no python3 found (install python3, or pass --python PATH)"
    local minor
    minor="$("$PYTHON" -c 'import sys; print(sys.version_info[1] if sys.version_info[0] == 3 else 0)')"
    if [[ "$minor" -lt $MIN_PYTHON_MINOR ]]; then
        die "$PYTHON is Python 3.$minor; edgecap needs 3.$MIN_PYTHON_MINOR or newer. On JetPack 5/6 install" \
            "python3.11 (e.g. the deadsnakes PPA: python3.11 python3.11-venv) and run: $0 --python /usr/bin/python3.11"
    fi
    "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
        || die "$PYTHON cannot create virtual environments: sudo apt-get install python3-venv"
}

# ai-edge-litert has wheels for 64-bit Arm and x86 on Python >= 3.10. 32-bit Pi OS and old Pythons get
# tflite-runtime, which is built against numpy 1.x and cannot run 4-bit weights.
choose_runtime() {
    local minor
    minor="$("$PYTHON" -c 'import sys; print(sys.version_info[1])')"
    if [[ "$USERLAND_BITS" == "32" || "$minor" -le 9 ]]; then RUNTIME="tflite-runtime"; else RUNTIME="ai-edge-litert"; fi
}

# ---------------------------------------------------------------------------------------------------
# Files

# install_file SRC DEST MODE: copy only when the content differs (keeps a second run a no-op).
install_file() {
    local src="$1" dest="$2" mode="$3"
    if [[ -f "$dest" ]] && cmp -s "$src" "$dest"; then
        [[ "$(stat -c %a "$dest")" == "${mode#0}" ]] || chmod "$mode" "$dest"
        return 1
    fi
    mkdir -p "$(dirname "$dest")"
    install -m "$mode" "$src" "$dest"
    return 0
}

ensure_dir() { # DIR MODE [OWNER:GROUP]
    local dir="$1" mode="$2" owner="${3:-}"
    [[ -d "$dir" ]] || mkdir -p "$dir"
    [[ "$(stat -c %a "$dir")" == "${mode#0}" ]] || chmod "$mode" "$dir"
    if [[ -n "$owner" ]] && is_root && [[ "$(stat -c %U:%G "$dir")" != "$owner" ]]; then chown "$owner" "$dir"; fi
}

safe_rm() { # refuses anything that is not a path below a real directory
    local p
    for p in "$@"; do
        [[ -n "$p" && "$p" == /*/* && "$p" != *"/../"* ]] || die "refusing to remove '$p'"
        rm -rf -- "$p"
    done
}

service_owner() { if [[ $USER_MODE -eq 0 ]] && is_root; then echo "$SERVICE_USER:$SERVICE_USER"; fi; }

ensure_service_user() {
    [[ $USER_MODE -eq 0 ]] || return 0
    is_root || die "installing the service needs root: run 'sudo $0', or '$0 --user' to install for yourself"
    getent group video >/dev/null || groupadd --system video
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        step "Creating system user $SERVICE_USER (group video)"
        useradd --system --user-group --groups video --home-dir /var/lib/edgecap --no-create-home \
            --shell /usr/sbin/nologin --comment "edgecap camera" "$SERVICE_USER"
    elif ! id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx video; then
        usermod -a -G video "$SERVICE_USER"
    fi
}

# The package source without build products: pip builds in a scratch copy so that `sudo ./install.sh`
# leaves no root-owned build/ or *.egg-info in the user's checkout.
source_digest() {
    (cd "$REPO" && find pyproject.toml README.md LICENSE device -type f ! -path '*/__pycache__/*' \
        ! -name '*.pyc' -print0 2>/dev/null | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-64
}

install_python_env() {
    local stamp_now extras="" pip_args=() runtime_args=() pipcmd=() build
    local sys_site=""
    # A Pi needs apt's picamera2 (and its libcamera bindings); a Jetson, JetPack's OpenCV with GStreamer.
    if [[ "$PLATFORM" == "pi" || "$PLATFORM" == "jetson" ]]; then sys_site="--system-site-packages"; fi
    if [[ ! -x "$VENV/bin/python" ]]; then
        step "Creating the virtual environment $VENV${sys_site:+ (with system site packages)}"
        "$PYTHON" -m venv ${sys_site:+"$sys_site"} "$VENV" \
            || { rm -rf -- "$VENV"; die "could not create $VENV (on Debian: sudo apt-get install python3-venv)"; }
        CHANGED=1
    fi
    choose_runtime
    # USB cameras and streams are read with OpenCV; a Pi uses picamera2, a Jetson its own OpenCV.
    if [[ "$PLATFORM" == "debian" || "$PLATFORM" == "other" ]] && compgen -G "/dev/video*" >/dev/null; then
        extras="[camera]"
    fi
    stamp_now="$(printf '%s\n' "$(source_digest)" "$RUNTIME" "$extras" "$("$VENV/bin/python" -V 2>&1)" | sha256sum | cut -c1-64)"
    if [[ -x "$VENV/bin/edgecap" && -f "$STAMP" && "$(cat "$STAMP")" == "$stamp_now" ]]; then
        say "Python packages are up to date ($RUNTIME)"
        return 0
    fi
    step "Installing edgecap and its Python packages with $RUNTIME (a few minutes on a Pi)"
    if [[ "$RUNTIME" == "tflite-runtime" ]]; then runtime_args=("tflite-runtime" "numpy<2"); fi
    # shellcheck disable=SC2206 # EDGECAP_PIP_ARGS is a list of words on purpose
    pip_args=(--disable-pip-version-check --no-input --quiet ${EDGECAP_PIP_ARGS:-})
    pipcmd=("$VENV/bin/python" -m pip)
    # 32-bit Pi OS often runs a 64-bit kernel: uname says aarch64, which would make pip pick the
    # ai-edge-litert requirement and 64-bit wheels. linux32 makes the platform read armv7l.
    if [[ "$USERLAND_BITS" == "32" && "$(uname -m)" == "aarch64" ]] && command -v setarch >/dev/null 2>&1; then
        pipcmd=(setarch linux32 "${pipcmd[@]}")
    fi
    build="$(mktemp -d)"
    local f parts=(pyproject.toml device)
    for f in README.md LICENSE; do [[ -e "$REPO/$f" ]] && parts+=("$f"); done
    (cd "$REPO" && tar -cf - --exclude=__pycache__ --exclude='*.pyc' "${parts[@]}") | tar -xf - -C "$build"
    # setuptools wants the readme that pyproject.toml names; an empty one will do for the build.
    [[ -e "$build/README.md" ]] || : > "$build/README.md"
    if ! "${pipcmd[@]}" install "${pip_args[@]}" "${runtime_args[@]}" "$build$extras"; then
        rm -rf -- "$build"
        die "pip could not install the Python packages (see above). Check the network, then run $0 again."
    fi
    # A same-version reinstall from a folder is not guaranteed: make sure the new code is in place.
    "${pipcmd[@]}" install "${pip_args[@]}" --no-deps --force-reinstall "$build" >/dev/null
    rm -rf -- "$build"
    printf '%s\n' "$stamp_now" > "$STAMP"
    CHANGED=1
}

is_four_bit() { # model set folder -> true when its weights are 4-bit (tflite-runtime cannot run them)
    local name
    name="$(basename "$1")"
    [[ "$name" == *int4* || "$name" == *4bit* ]] && return 0
    grep -qiE '"(int4|4-?bit)"' "$1/manifest.json" 2>/dev/null
}

install_models() {
    local set name f copied=0 wanted=()
    ensure_dir "$MODELS_DIR" 0755
    for set in "$REPO"/models/*/; do
        set="${set%/}"
        [[ -f "$set/manifest.json" ]] || continue
        name="$(basename "$set")"
        # Float sets are the workstation's reference (large, slow on a Pi); copy one by hand if wanted.
        [[ "$name" == *-float* ]] && continue
        if [[ "$RUNTIME" == "tflite-runtime" ]] && is_four_bit "$set"; then
            say "Skipping model $name: 4-bit weights need ai-edge-litert"
            continue
        fi
        wanted+=("$name")
        for f in "$set"/*; do
            [[ -f "$f" ]] || continue
            if install_file "$f" "$MODELS_DIR/$name/$(basename "$f")" 0644; then copied=1; fi
        done
        # Files the new version of the set no longer has.
        for f in "$MODELS_DIR/$name"/*; do
            [[ -e "$f" && ! -e "$set/$(basename "$f")" ]] && { rm -f -- "$f"; copied=1; }
        done
    done
    for set in "$MODELS_DIR"/*/; do
        [[ -d "$set" ]] || continue
        name="$(basename "$set")"
        if [[ " ${wanted[*]} " != *" $name "* ]]; then safe_rm "${set%/}"; copied=1; fi
    done
    if [[ ${#wanted[@]} -eq 0 ]]; then
        warn "no model sets in $REPO/models: edgecap cannot caption until they are there"
    elif [[ $copied -eq 1 ]]; then
        say "Models in $MODELS_DIR: ${wanted[*]}"
        CHANGED=1
    fi
}

new_password() { "$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(12))'; }

hash_password() { # password on stdin of `edgecap hash-password`, the hash on stdout
    local hash errors
    errors="$(mktemp)"
    # Its stderr only says where the hash goes (we know); show it only when it failed.
    if ! hash="$(printf '%s\n' "$1" | "$VENV/bin/edgecap" hash-password 2>"$errors")" || [[ -z "$hash" ]]; then
        cat "$errors" >&2
        rm -f -- "$errors"
        die "edgecap hash-password failed"
    fi
    rm -f -- "$errors"
    printf '%s' "$hash"
}

toml_string() { local s="${1//\\/\\\\}"; printf '"%s"' "${s//\"/\\\"}"; }

camera_lines() {
    local spec="${CAMERA:-auto}"
    case "$spec" in
        folder:*) printf 'source = "folder"\nfolder = %s\n' "$(toml_string "${spec#folder:}")" ;;
        stream:*) printf 'source = "stream"\nurl = %s\n' "$(toml_string "${spec#stream:}")" ;;
        auto|picamera2|usb|jetson|samples)
            printf 'source = "%s"\n' "$spec"
            printf '# folder = "/home/pi/incoming"    # for source = "folder"\n' ;;
        *) die "--camera: unknown source '$spec' (auto, picamera2, usb, jetson, samples, folder:DIR, stream:URL)" ;;
    esac
}

write_config() {
    local tmp threads captioner="captioner-int8" group="" hash restart_hint
    ensure_conf_dir
    if [[ -f "$CONF_FILE" ]]; then
        say "Keeping the existing $CONF_FILE"
        local line
        if [[ -n "$PORT" && "$PORT" != "$(config_port)" ]]; then
            warn "--port $PORT: the existing config says port $(config_port); edit $CONF_FILE to change it"
        fi
        if [[ -n "$CAMERA" ]]; then
            while IFS= read -r line; do
                [[ "$line" == \#* ]] || grep -qxF "$line" "$CONF_FILE" \
                    || { warn "--camera $CAMERA: the existing config differs; edit [camera] in $CONF_FILE"; break; }
            done < <(camera_lines)
        fi
        return 0
    fi
    step "Writing $CONF_FILE"
    threads="$(nproc 2>/dev/null || echo 2)"
    [[ "$threads" -le 4 ]] || threads=4
    NEW_PASSWORD="$(new_password)"
    hash="$(hash_password "$NEW_PASSWORD")"
    if [[ $SYSTEMD -eq 1 && $USER_MODE -eq 0 ]]; then restart_hint="sudo systemctl restart edgecap"
    elif [[ $SYSTEMD -eq 1 ]]; then restart_hint="systemctl --user restart edgecap"
    else restart_hint="$(self_cmd) --stop && $(self_cmd)"; fi
    tmp="$(mktemp)"
    cat > "$tmp" <<EOF
# edgecap configuration, written by install.sh. Every key is explained in docs/config.md.
# After editing: $restart_hint
data_dir = $(toml_string "$DATA_DIR")
models_dir = $(toml_string "$MODELS_DIR")

[camera]
$(camera_lines)

[capture]
interval = 5.0          # seconds between captures
min_change = 0.02       # skip frames that barely differ from the last stored one

[model]
captioner = "$captioner"   # captioner-4bit is smaller (needs ai-edge-litert)
embedder = "minilm-int8"
num_threads = $threads

[store]
max_size_mb = 2048      # oldest captures are deleted to stay under this
min_free_mb = 500       # ... and to keep this much disk free

[web]
host = "0.0.0.0"
port = ${PORT:-$DEFAULT_PORT}
auth = true
# Change the password: $(self_cmd) --reset-password
password_hash = $(toml_string "$hash")
EOF
    if [[ $USER_MODE -eq 0 ]] && is_root; then group="$SERVICE_USER"; fi
    install -m 0640 ${group:+-o root -g "$group"} "$tmp" "$CONF_FILE"
    rm -f -- "$tmp"
    CHANGED=1
}

reset_password() {
    [[ -f "$CONF_FILE" ]] || die "$CONF_FILE does not exist: install first"
    [[ -x "$VENV/bin/edgecap" ]] || die "$VENV/bin/edgecap is missing: install first"
    local hash tmp
    NEW_PASSWORD="$(new_password)"
    hash="$(hash_password "$NEW_PASSWORD")"
    tmp="$(mktemp)"
    if grep -q '^password_hash *=' "$CONF_FILE"; then
        awk -v line="password_hash = $(toml_string "$hash")" \
            '/^password_hash *=/ { print line; next } { print }' "$CONF_FILE" > "$tmp"
    else
        die "$CONF_FILE has no password_hash line under [web]; add one with: edgecap hash-password"
    fi
    # Rewrite in place so the owner and mode (root:edgecap 0640) stay.
    cat "$tmp" > "$CONF_FILE"
    rm -f -- "$tmp"
    CHANGED=1
}

install_data_dirs() {
    local owner
    owner="$(service_owner)"
    ensure_dir "$DATA_DIR" 0750 "$owner"
    ensure_dir "$CACHE_DIR" 0750 "$owner"
    ensure_conf_dir
}

# The config holds the password hash: readable by the service's group only (root:edgecap 0750).
ensure_conf_dir() {
    if [[ -n "$(service_owner)" ]]; then ensure_dir "$CONF_DIR" 0750 "root:$SERVICE_USER"
    else ensure_dir "$CONF_DIR" 0700; fi
}

install_bin_link() {
    [[ -n "$BIN_LINK" ]] || return 0
    if [[ "$(readlink "$BIN_LINK" 2>/dev/null)" != "$VENV/bin/edgecap" ]]; then
        mkdir -p "$(dirname "$BIN_LINK")"
        ln -sfn "$VENV/bin/edgecap" "$BIN_LINK"
    fi
}

# The unit in systemd/ names the default paths; other layouts get them rewritten, and the data
# folders outside /var/lib become writable explicitly (ProtectSystem=strict makes the rest read-only).
render_unit() { # prints the unit
    local exec_line="ExecStart=$VENV/bin/edgecap --config $CONF_FILE run"
    if [[ $USER_MODE -eq 1 ]]; then
        sed -e "s#^ExecStart=.*#$exec_line#" "$REPO/systemd/edgecap-user.service"
    elif [[ -n "$PREFIX" ]]; then
        sed -e "s#^ExecStart=.*#$exec_line#" \
            -e "s#^CacheDirectoryMode=.*#&\nReadWritePaths=$DATA_DIR $CACHE_DIR#" \
            -e "s#HOME=/var/lib/edgecap XDG_CACHE_HOME=/var/cache/edgecap#HOME=$DATA_DIR XDG_CACHE_HOME=$CACHE_DIR#" \
            "$REPO/systemd/edgecap.service"
    else
        sed -e "s#^ExecStart=.*#$exec_line#" "$REPO/systemd/edgecap.service"
    fi
}

systemctl_() { if [[ $USER_MODE -eq 1 ]]; then systemctl --user "$@"; else systemctl "$@"; fi; }

install_unit() {
    [[ $SYSTEMD -eq 1 ]] || return 0
    local tmp
    if [[ $USER_MODE -eq 0 && -n "$PREFIX" ]]; then
        case "$PREFIX" in
            /home/*|/root/*|/run/user/*) die "--prefix $PREFIX: the service cannot see home folders (ProtectHome); use --user or another folder" ;;
        esac
    fi
    tmp="$(mktemp)"
    render_unit > "$tmp"
    if install_file "$tmp" "$UNIT_FILE" 0644; then
        step "Installed $UNIT_FILE"
        systemctl_ daemon-reload
        CHANGED=1
    fi
    rm -f -- "$tmp"
}

# ---------------------------------------------------------------------------------------------------
# Running it

running_pid() { # the pid of the background edgecap, if it runs
    local pid
    [[ -f "$PID_FILE" ]] || return 1
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    # The pid may have been reused after a reboot of the container: check it is our edgecap.
    { tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null | grep -qF "edgecap --config $CONF_FILE run" || return 1
    echo "$pid"
}

start_background() {
    local pid cmd=()
    if pid="$(running_pid)"; then
        if [[ $CHANGED -eq 0 ]]; then say "edgecap is already running (pid $pid)"; return 0; fi
        stop_background
    fi
    ensure_dir "$RUN_DIR" 0755
    ensure_dir "$(dirname "$LOG_FILE")" 0750
    cmd=(env "HOME=$DATA_DIR" "XDG_CACHE_HOME=$CACHE_DIR" PYTHONUNBUFFERED=1
         "$VENV/bin/edgecap" --config "$CONF_FILE" run)
    if [[ $USER_MODE -eq 0 ]] && is_root; then
        # Same identity as under systemd: the edgecap user, its group and video.
        cmd=(setpriv --reuid="$SERVICE_USER" --regid="$SERVICE_USER" --init-groups -- "${cmd[@]}")
    fi
    step "Starting edgecap in the background (log: $LOG_FILE)"
    # setsid: its own session, so it outlives this shell and the terminal.
    setsid "${cmd[@]}" >> "$LOG_FILE" 2>&1 < /dev/null &
    echo $! > "$PID_FILE"
}

stop_background() {
    local pid i
    pid="$(running_pid)" || { rm -f -- "$PID_FILE"; return 0; }
    say "Stopping edgecap (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then warn "pid $pid did not stop in 20 s; killing it"; kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f -- "$PID_FILE"
}

start_service() {
    if [[ $START -eq 0 ]]; then say "Not starting (--no-start)"; return 1; fi
    if [[ $SYSTEMD -eq 1 ]]; then
        systemctl_ enable --quiet edgecap.service
        if [[ $CHANGED -eq 1 ]] || ! systemctl_ is-active --quiet edgecap.service; then
            step "Starting edgecap.service"
            # restart: picks up a new venv, models or config; start alone would keep the old process.
            systemctl_ restart edgecap.service || true
        else
            say "edgecap.service is running"
        fi
        if [[ $USER_MODE -eq 1 ]] && command -v loginctl >/dev/null 2>&1 \
            && [[ "$(loginctl show-user "$USER" -p Linger --value 2>/dev/null)" != "yes" ]]; then
            loginctl enable-linger "$USER" 2>/dev/null \
                || warn "edgecap stops when you log out; to keep it running: sudo loginctl enable-linger $USER"
        fi
    else
        start_background
    fi
    return 0
}

config_port() {
    local p
    p="$(sed -n 's/^port *= *\([0-9]*\).*/\1/p' "$CONF_FILE" 2>/dev/null | head -n1)"
    echo "${p:-$DEFAULT_PORT}"
}

show_failure() {
    if [[ $SYSTEMD -eq 1 ]]; then
        systemctl_ status --no-pager --lines=0 edgecap.service >&2 || true
        if [[ $USER_MODE -eq 1 ]]; then journalctl --user -u edgecap --no-pager -n 30 >&2 || true
        else journalctl -u edgecap --no-pager -n 30 >&2 || true; fi
    elif [[ -f "$LOG_FILE" ]]; then
        tail -n 30 "$LOG_FILE" >&2
    fi
}

# Polls /healthz (no password needed) until it answers, the service dies, or EDGECAP_WAIT runs out.
wait_for_page() {
    local port="$1" waited=0 limit="${EDGECAP_WAIT:-300}"
    step "Waiting for the page on port $port (loading the models takes a while on a Pi)"
    while ! "$VENV/bin/python" - "$port" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
    do
        if [[ $SYSTEMD -eq 1 ]]; then
            if systemctl_ is-failed --quiet edgecap.service; then show_failure; die "edgecap.service failed to start"; fi
        elif ! running_pid >/dev/null; then
            show_failure; die "edgecap exited during start-up (log: $LOG_FILE)"
        fi
        if [[ $waited -ge $limit ]]; then show_failure; die "the page did not answer within $limit s"; fi
        sleep 1
        waited=$((waited + 1))
    done
}

print_summary() {
    local port="$1" host addr
    host="$(hostname 2>/dev/null || echo localhost)"
    addr="$(hostname -I 2>/dev/null | awk '{print $1}')"
    say ""
    say "edgecap is running. Open in a browser on this network:"
    say "    http://$host.local:$port/"
    if [[ -n "$addr" ]]; then say "    http://$addr:$port/"; fi
    print_password
    if [[ $SYSTEMD -eq 1 ]]; then
        local u=""
        [[ $USER_MODE -eq 1 ]] && u=" --user"
        say "It starts at boot. Status: systemctl$u status edgecap   Log: journalctl$u -u edgecap"
    else
        say "systemd is not running here (a container?), so edgecap runs in the background and will not"
        say "come back after a restart. Log: $LOG_FILE"
        say "Stop it with: $(self_cmd) --stop   (or: kill \$(cat $PID_FILE))"
    fi
}

print_password() {
    [[ -n "$NEW_PASSWORD" ]] || return 0
    say ""
    say "    Web login password: $NEW_PASSWORD"
    say "    (shown only this once; only its hash is stored. New one: $(self_cmd) --reset-password)"
    say ""
}

do_install() {
    local port
    detect_platform
    say "Found: $PLATFORM_DESC"
    [[ $USER_MODE -eq 1 ]] || is_root || die "installing the service needs root: run 'sudo $0', or '$0 --user' to install for yourself"
    detect_systemd
    if [[ $SYSTEMD -eq 1 ]]; then say "Service manager: systemd"; else say "Service manager: none (systemd is not running)"; fi
    if is_root && [[ $USER_MODE -eq 0 ]]; then install_apt_packages; fi
    pick_python
    say "Python: $PYTHON ($("$PYTHON" -V 2>&1))"
    ensure_service_user
    ensure_dir "$APP_DIR" 0755
    install_python_env
    install_models
    write_config
    install_data_dirs
    install_bin_link
    install_unit
    if start_service; then
        port="$(config_port)"
        wait_for_page "$port"
        print_summary "$port"
    else
        print_password
        if [[ $SYSTEMD -eq 1 && $USER_MODE -eq 1 ]]; then say "Installed. Start it with: systemctl --user enable --now edgecap"
        elif [[ $SYSTEMD -eq 1 ]]; then say "Installed. Start it with: sudo systemctl enable --now edgecap"
        else say "Installed. Start it with: $(self_cmd)"; fi
    fi
}

do_reset_password() {
    [[ $USER_MODE -eq 1 ]] || is_root || die "run it with sudo"
    detect_systemd
    reset_password
    if [[ $SYSTEMD -eq 1 ]]; then
        systemctl_ try-restart edgecap.service
    elif running_pid >/dev/null; then
        stop_background
        start_background
        wait_for_page "$(config_port)"
    fi
    print_password
}

do_uninstall() {
    [[ $USER_MODE -eq 1 ]] || is_root || die "uninstalling the service needs root: run 'sudo $0 --uninstall'"
    detect_systemd
    step "Removing edgecap"
    if [[ -f "$UNIT_FILE" ]] && command -v systemctl >/dev/null 2>&1; then
        if [[ $SYSTEMD -eq 1 ]]; then systemctl_ disable --now --quiet edgecap.service || true; fi
        rm -f -- "$UNIT_FILE"
        if [[ $SYSTEMD -eq 1 ]]; then systemctl_ daemon-reload; fi
    fi
    stop_background
    if [[ -n "$BIN_LINK" && "$(readlink "$BIN_LINK" 2>/dev/null)" == "$VENV/bin/edgecap" ]]; then rm -f -- "$BIN_LINK"; fi
    safe_rm "$VENV" "$MODELS_DIR" "$RUN_DIR" "$(dirname "$LOG_FILE")"
    if [[ $PURGE -eq 1 ]]; then
        safe_rm "$DATA_DIR" "$CACHE_DIR" "$CONF_DIR"
        if [[ $USER_MODE -eq 0 ]] && getent passwd "$SERVICE_USER" >/dev/null; then
            userdel "$SERVICE_USER" 2>/dev/null || warn "could not remove the user $SERVICE_USER"
        fi
        if [[ $USER_MODE -eq 0 ]]; then say "Removed edgecap, its captures, its config and the $SERVICE_USER user."
        else say "Removed edgecap, its captures and its config."; fi
    else
        say "Removed edgecap. Kept the captures in $DATA_DIR and the config in $CONF_FILE"
        say "(delete them too with: $(self_cmd) --uninstall --purge)"
    fi
    rmdir -- "$APP_DIR" 2>/dev/null || true
}

main() {
    parse_args "$@"
    layout
    case "$MODE" in
        install) do_install ;;
        uninstall) do_uninstall ;;
        stop) detect_systemd; stop_background ;;
        reset-password) do_reset_password ;;
        print-unit) render_unit ;;
    esac
}

main "$@"
