#!/usr/bin/env bash
# Install edge-agent as a systemd service on Raspberry Pi OS / Debian bookworm, 64-bit.
#
#   sudo scripts/install.sh              install or upgrade from this checkout, enable the agent
#   sudo scripts/install.sh --hub        ... and enable the hub (edge-hub.service) too
#   sudo scripts/install.sh --hub --turn --turn-listen 203.0.113.7 --turn-host turn.example.net
#                                        ... and coturn, its secret shared with [hub.turn]
#   sudo scripts/install.sh --uninstall  remove units and the virtual environment, keep
#                                        settings and state (--purge removes those too)
#   scripts/install.sh --root /tmp/img   install into a scratch root: no apt, no user
#                                        accounts, units enabled with `systemctl --root`
#
# Running it again changes nothing unless the checkout or the units changed. Existing
# settings files are never overwritten.
#
# 32-bit Raspberry Pi OS (armhf: armv7l or armv6l, even on a 64-bit kernel) is refused:
# av and pylibsrtp publish no wheels for it, and av cannot be built against its FFmpeg.
set -euo pipefail

readonly SERVICE_USER=edge-agent
readonly DEVICE_GROUPS=(video audio dialout gpio)
readonly UNITS=(edge-agent.service edge-hub.service)
readonly DEFAULT_PREFIX=/opt/edge-agent
# Build and runtime needs: venv, libsystemd for journal logging (systemd-python), and the
# codec libraries PyAV and aiortc build against where no binary wheel exists.
readonly APT_PACKAGES=(
    python3 python3-venv python3-dev build-essential pkg-config libsystemd-dev
    libffi-dev libssl-dev libopus-dev libvpx-dev libsrtp2-dev
    libavformat-dev libavcodec-dev libavdevice-dev libavutil-dev libavfilter-dev
    libswscale-dev libswresample-dev ffmpeg v4l-utils
)

ROOT=/
PREFIX=$DEFAULT_PREFIX
SOURCE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
ACTION=install
PURGE=0
WITH_HUB=0
WITH_TURN=0
TURN_LISTEN=()
TURN_HOST=
TURN_EXTERNAL=
DO_APT=1
DO_USER=1
DO_PIP=1
DO_VENV=1
DO_ENABLE=1
PIP_OFFLINE=0

usage() {
    cat <<EOF
usage: $0 [options]
  --prefix DIR     install the virtual environment under DIR (default $DEFAULT_PREFIX)
  --root DIR       treat DIR as the root file system (implies --no-apt --no-user)
  --source DIR     the edge-agent checkout to install (default: this script's checkout)
  --python PATH    interpreter for the virtual environment (default: python3)
  --hub            enable edge-hub.service as well as edge-agent.service
  --turn           with --hub: install and enable coturn, sharing a generated secret
                   with the hub's [hub.turn] (short-lived credentials for every call)
  --turn-listen IP an address coturn listens and relays on (repeat for several)
  --turn-host NAME the name or address callers reach coturn at (default: the first
                   --turn-listen); it goes into the hub's TURN URLs
  --turn-external-ip PUBLIC[/PRIVATE]
                   coturn's public address when the host sits behind a 1:1 NAT
  --no-apt         do not install Debian packages
  --no-user        do not create the $SERVICE_USER user or touch groups
  --skip-pip       create the virtual environment but do not install the project
  --no-venv        no virtual environment either: settings and units only
  --pip-offline    install the project alone, without downloading anything (needs
                   python3-setuptools and python3-wheel; dependencies must be present)
  --no-enable      install the units but do not enable them
  --uninstall      remove the units and the virtual environment
  --purge          with --uninstall: also remove settings, state and the user
  -h, --help       this text
EOF
}

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
            --prefix) PREFIX=${2:?--prefix needs a directory}; shift ;;
            --root) ROOT=${2:?--root needs a directory}; shift ;;
            --source) SOURCE=${2:?--source needs a directory}; shift ;;
            --python) PYTHON=${2:?--python needs an interpreter}; shift ;;
            --hub) WITH_HUB=1 ;;
            --turn) WITH_TURN=1 ;;
            --turn-listen) TURN_LISTEN+=("${2:?--turn-listen needs an address}"); shift ;;
            --turn-host) TURN_HOST=${2:?--turn-host needs a name}; shift ;;
            --turn-external-ip) TURN_EXTERNAL=${2:?--turn-external-ip needs an address}; shift ;;
            --no-apt) DO_APT=0 ;;
            --no-user) DO_USER=0 ;;
            --skip-pip) DO_PIP=0 ;;
            --no-venv) DO_VENV=0; DO_PIP=0 ;;
            --pip-offline) PIP_OFFLINE=1 ;;
            --no-enable) DO_ENABLE=0 ;;
            --uninstall) ACTION=uninstall ;;
            --purge) PURGE=1 ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown option: $1" ;;
        esac
        shift
    done
    case $PREFIX in /*) ;; *) die "--prefix must be absolute: $PREFIX" ;; esac
    [ "$PREFIX" != / ] || die "--prefix / would put the venv at the root"
    PREFIX=${PREFIX%/}
    if [ "$ROOT" != / ]; then
        mkdir -p "$ROOT"
        ROOT=$(cd "$ROOT" && pwd)
        # A scratch root is not this machine: its packages and users are not ours to change.
        DO_APT=0
        DO_USER=0
    fi
    [ "$PURGE" = 0 ] || [ "$ACTION" = uninstall ] || die "--purge goes with --uninstall"
    check_turn_args
    case $PREFIX in
        /home/*|/root/*) say "warning: the units set ProtectHome=yes, so $PREFIX is hidden from them" ;;
    esac
}

check_turn_args() {
    local address
    if [ "$WITH_TURN" = 0 ]; then
        [ ${#TURN_LISTEN[@]} -eq 0 ] && [ -z "$TURN_HOST$TURN_EXTERNAL" ] \
            || die "--turn-listen, --turn-host and --turn-external-ip go with --turn"
        return
    fi
    [ "$WITH_HUB" = 1 ] || die "--turn goes with --hub: the hub hands out its credentials"
    [ ${#TURN_LISTEN[@]} -gt 0 ] \
        || die "--turn needs --turn-listen ADDRESS: the interface addresses coturn serves on"
    for address in "${TURN_LISTEN[@]}" ${TURN_EXTERNAL//\// }; do
        [[ $address =~ ^[0-9A-Fa-f.:]+$ ]] || die "not an IP address: $address"
    done
    [[ ${TURN_HOST:-${TURN_LISTEN[0]}} =~ ^[A-Za-z0-9.:-]+$ ]] \
        || die "not a host name or address: $TURN_HOST"
    TURN_HOST=${TURN_HOST:-${TURN_LISTEN[0]}}
}

# Path inside the target root.
in_root() { if [ "$ROOT" = / ]; then printf '%s' "$1"; else printf '%s%s' "$ROOT" "$1"; fi; }

live_system() { [ "$ROOT" = / ] && [ -d /run/systemd/system ]; }

# av (PyAV) and pylibsrtp publish wheels for 64-bit ARM and x86 only; on 32-bit ARM pip
# would try to build them, and av needs a newer FFmpeg than Debian bookworm ships. A
# 32-bit user space on a 64-bit kernel (Pi OS's default on a Pi 4 or 5) reports aarch64
# from `uname -m`, so the user space's word size is asked too.
require_64_bit() {
    local machine bits
    machine=$(uname -m)
    bits=$(getconf LONG_BIT 2>/dev/null || echo 64)
    case $machine in
        armv6l|armv7l|armv8l|armhf|arm) ;;
        aarch64|arm64) [ "$bits" = 32 ] || return 0; machine="$machine kernel, 32-bit user space" ;;
        *) return 0 ;;
    esac
    die "32-bit Raspberry Pi OS ($machine) is not supported: av and pylibsrtp publish" \
        "no armv7l (32-bit ARM) wheels. Install the 64-bit Raspberry Pi OS (aarch64)" \
        "and run this again."
}

require_root_user() {
    if [ "$ROOT" = / ] && [ "$(id -u)" != 0 ]; then
        die "run as root (sudo $0 ...), or use --root DIR to install into a scratch root"
    fi
}

# --- install -----------------------------------------------------------------------------

install_packages() {
    if [ "$DO_APT" = 0 ]; then
        say "skipping apt; the system needs: ${APT_PACKAGES[*]}"
        return
    fi
    local missing=() pkg wanted=("${APT_PACKAGES[@]}")
    [ "$WITH_TURN" = 0 ] || wanted+=(coturn)
    for pkg in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "apt: all ${#wanted[@]} packages present"
        return
    fi
    say "apt: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

create_user() {
    if [ "$DO_USER" = 0 ]; then
        say "skipping accounts; the system needs user $SERVICE_USER in groups ${DEVICE_GROUPS[*]}"
        return
    fi
    local group
    for group in "${DEVICE_GROUPS[@]}"; do
        # gpio exists on Raspberry Pi OS only; the unit names it, so it must exist.
        getent group "$group" >/dev/null || { groupadd --system "$group"; say "created group $group"; }
    done
    if ! id "$SERVICE_USER" >/dev/null 2>&1; then
        useradd --system --user-group --home-dir "/var/lib/$SERVICE_USER" --no-create-home \
            --shell /usr/sbin/nologin --comment "edge-agent service" "$SERVICE_USER"
        say "created system user $SERVICE_USER"
    fi
    for group in "${DEVICE_GROUPS[@]}"; do
        id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx "$group" \
            || { usermod -a -G "$group" "$SERVICE_USER"; say "added $SERVICE_USER to $group"; }
    done
}

create_venv() {
    local venv
    venv=$(in_root "$PREFIX/venv")
    if [ "$DO_VENV" = 0 ]; then
        say "skipping the virtual environment (--no-venv); the units expect $PREFIX/venv"
        return
    fi
    if [ -x "$venv/bin/python" ]; then
        return
    fi
    mkdir -p "$(dirname "$venv")"
    chmod 0755 "$(dirname "$venv")"
    # System site packages: on Raspberry Pi OS the camera stack's Python bindings
    # (python3-libcamera, python3-picamera2) come from apt only.
    "$PYTHON" -m venv --system-site-packages "$venv"
    say "created virtual environment $venv"
}

# A fingerprint of what pip would install, so an unchanged checkout is not reinstalled.
source_stamp() {
    (
        cd "$SOURCE"
        find pyproject.toml agent -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
            | LC_ALL=C sort -z | xargs -0 sha256sum
    ) | sha256sum | cut -d' ' -f1
}

install_project() {
    local stamp_file stamp build pip_args
    stamp_file=$(in_root "$PREFIX/.source-stamp")
    if [ "$DO_PIP" = 0 ]; then
        say "skipping pip (--skip-pip)"
        return
    fi
    [ -f "$SOURCE/pyproject.toml" ] || die "no pyproject.toml in $SOURCE (use --source)"
    stamp=$(source_stamp)
    if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
        say "project unchanged since the last install"
        return
    fi
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    build=$(mktemp -d)
    BUILD_DIR=$build
    tar -C "$SOURCE" --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml agent \
        $(cd "$SOURCE" && ls -d README* LICENSE* 2>/dev/null) | tar -C "$build" -xf -
    pip_args=(--disable-pip-version-check --no-input --quiet)
    if [ "$PIP_OFFLINE" = 1 ]; then
        legacy_license "$build/pyproject.toml"
        pip_args+=(--no-index --no-deps --no-build-isolation)
        "$(in_root "$PREFIX/venv")/bin/pip" install "${pip_args[@]}" "$build"
    else
        "$(in_root "$PREFIX/venv")/bin/pip" install "${pip_args[@]}" "$build[systemd]"
    fi
    printf '%s\n' "$stamp" >"$stamp_file"
    chmod 0644 "$stamp_file"
    PROJECT_CHANGED=1
    say "installed the project into $PREFIX/venv"
}

# An offline build uses the system's setuptools. Debian bookworm's (66) predates the SPDX
# license string (PEP 639, setuptools 77) and refuses it, so the build copy gets the
# older table form, which names the same license.
legacy_license() {
    local major
    major=$("$(in_root "$PREFIX/venv")/bin/python" -c \
        'import setuptools; print(setuptools.__version__.split(".")[0])' 2>/dev/null || echo 0)
    [ "$major" -lt 77 ] || return 0
    sed -i -E 's/^license = ("[^"]+")$/license = { text = \1 }/' "$1"
}

# True (standard input drained, and said) when PATH exists: settings are never overwritten.
kept_existing() {
    [ -e "$1" ] || return 1
    say "kept existing $1"
    cat >/dev/null
}

# Standard input to PATH, never readable by others while written, then MODE.
write_private() {
    (umask 077 && cat >"$1")
    chmod "$2" "$1"
}

write_if_missing() {
    local path=$1 mode=$2
    if kept_existing "$path"; then return; fi
    write_private "$path" "$mode"
    [ "$DO_USER" = 0 ] || chown "root:$SERVICE_USER" "$path"
    say "wrote $path"
}

write_settings() {
    local dir
    dir=$(in_root /etc/edge-agent)
    if [ ! -d "$dir" ]; then
        mkdir -p "$dir"
        chmod 0750 "$dir"
        # Readable by the service through its group, writable by root only.
        [ "$DO_USER" = 0 ] || chown "root:$SERVICE_USER" "$dir"
    fi
    write_if_missing "$dir/agent.toml" 0640 <<'EOF'
# edge-agent settings (edge-agent.service). Check with:
#   sudo -u edge-agent /opt/edge-agent/venv/bin/edge-agent config check /etc/edge-agent/agent.toml
# then apply with: sudo systemctl reload edge-agent

# This device's account name on the hub (default: the host name).
# name = "front-door"

# Groups to join on the hub.
groups = ["devices"]

# debug, info, warning, error or critical.
log_level = "info"

[connect]
# Without a url the agent runs its own hub and viewer on [hub] below. To use a shared hub:
#   url = "wss://hub.example.net/ws"
#   token_file = "/etc/edge-agent/token"   # mode 0640 root:edge-agent

[hub]
host = "127.0.0.1"
port = 8080
EOF
    hub_settings | write_if_missing "$dir/hub.toml" 0640
}

hub_settings() {
    cat <<'EOF'
# edge-hub settings (edge-hub.service, enabled with: sudo systemctl enable --now edge-hub).
# Accounts and keys live in /var/lib/edge-hub (the unit's StateDirectory).

log_level = "info"

[hub]
# Loopback behind a TLS reverse proxy; browsers need https:// for microphone and push.
host = "127.0.0.1"
port = 8080
# public_url = "https://hub.example.net"
EOF
    [ "$WITH_TURN" = 0 ] || hub_turn_settings
}

# The hub's side of TURN: where callers reach coturn, and the secret both know.
hub_turn_settings() {
    cat <<EOF

[[hub.ice_servers]]
urls = ["stun:$(url_host "$TURN_HOST"):$TURN_PORT"]

# Short-lived credentials for every call (coturn checks them with use-auth-secret).
[hub.turn]
urls = ["turn:$(url_host "$TURN_HOST"):$TURN_PORT?transport=udp", "turn:$(url_host "$TURN_HOST"):$TURN_PORT?transport=tcp"]
secret_file = "$TURN_SECRET"
ttl = "1h"
EOF
}

url_host() { if [[ $1 == *:* ]]; then printf '[%s]' "$1"; else printf '%s' "$1"; fi; }

# --- TURN (coturn) -----------------------------------------------------------------------

readonly TURN_SECRET=/etc/edge-agent/turn-secret
readonly TURN_CONF=/etc/turnserver-edge-agent.conf
readonly TURN_DROPIN=/etc/systemd/system/coturn.service.d/edge-agent.conf
readonly TURN_PORT=3478
readonly TURN_RELAY_PORTS=49152-65535
# Never relayed to: private, shared (carrier NAT), loopback, link-local and other special
# ranges, so that the relay cannot reach into the host's own networks (coturn's own
# security advice; RFC 8656 section 21.3).
readonly TURN_DENIED=(
    0.0.0.0-0.255.255.255 10.0.0.0-10.255.255.255 100.64.0.0-100.127.255.255
    127.0.0.0-127.255.255.255 169.254.0.0-169.254.255.255 172.16.0.0-172.31.255.255
    192.0.0.0-192.0.0.255 192.168.0.0-192.168.255.255 198.18.0.0-198.19.255.255
    240.0.0.0-255.255.255.255 ::1 fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff
    fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff
)

configure_turn() {
    [ "$WITH_TURN" = 1 ] || return 0
    local secret_path conf dropin secret
    secret_path=$(in_root "$TURN_SECRET")
    if [ ! -s "$secret_path" ]; then
        (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$secret_path" && echo >>"$secret_path")
        chmod 0600 "$secret_path"
        [ "$DO_USER" = 0 ] || chown "$SERVICE_USER:$SERVICE_USER" "$secret_path"
        say "made the TURN secret $secret_path (mode 0600)"
    fi
    secret=$(tr -d ' \n' <"$secret_path")
    conf=$(in_root "$TURN_CONF")
    [ -e "$conf" ] || TURN_CHANGED=1
    turn_config "$secret" | write_if_missing_as "$conf" 0640 turnserver
    dropin=$(in_root "$TURN_DROPIN")
    mkdir -p "$(dirname "$dropin")"
    if ! turn_dropin | cmp -s - "$dropin" 2>/dev/null; then
        turn_dropin >"$dropin"
        chmod 0644 "$dropin"
        UNITS_CHANGED=1
        TURN_CHANGED=1
        say "installed $dropin"
    fi
    if ! grep -q '^\[hub\.turn\]' "$(in_root /etc/edge-agent/hub.toml)"; then
        say "the existing hub.toml has no [hub.turn]; add these lines to it:"
        hub_turn_settings | sed 's/^/    /'
    fi
    say "TURN: open ${TURN_PORT}/udp and ${TURN_PORT}/tcp (STUN and TURN) and" \
        "${TURN_RELAY_PORTS}/udp (relayed media) to the internet on ${TURN_LISTEN[*]}"
}

turn_config() {
    local address peers
    cat <<EOF
# coturn for the edge-agent hub, written by scripts/install.sh --turn (never overwritten).
# The secret is shared with the hub ([hub.turn] secret_file in hub.toml, the file
# $TURN_SECRET): change both together, then restart coturn and edge-hub.
# Open to the internet: ${TURN_PORT}/udp, ${TURN_PORT}/tcp and ${TURN_RELAY_PORTS}/udp.
listening-port=$TURN_PORT
EOF
    for address in "${TURN_LISTEN[@]}"; do
        printf 'listening-ip=%s\nrelay-ip=%s\n' "$address" "$address"
    done
    [ -z "$TURN_EXTERNAL" ] || printf 'external-ip=%s\n' "$TURN_EXTERNAL"
    cat <<EOF
min-port=${TURN_RELAY_PORTS%-*}
max-port=${TURN_RELAY_PORTS#*-}
use-auth-secret
static-auth-secret=$1
realm=$TURN_HOST
fingerprint
no-cli
no-tls
no-dtls
no-multicast-peers
no-software-attribute
syslog
EOF
    for peers in "${TURN_DENIED[@]}"; do printf 'denied-peer-ip=%s\n' "$peers"; done
}

# coturn is Debian's package: enabled where it is installed, left alone where it is not.
enable_turn() {
    [ "$WITH_TURN" = 1 ] || return 0
    local unit=coturn.service
    if [ ! -e "$(in_root /lib/systemd/system/$unit)" ] && [ ! -e "$(in_root /usr/lib/systemd/system/$unit)" ]; then
        say "coturn is not installed in $(in_root /); install it, then: systemctl enable --now $unit"
        return
    fi
    if [ "$DO_ENABLE" = 0 ] || ! command -v systemctl >/dev/null; then
        say "not enabling coturn; later: systemctl enable --now $unit"
    elif live_system; then
        systemctl enable --quiet $unit
        [ "$TURN_CHANGED" = 0 ] || systemctl try-restart $unit
        say "enabled $unit; start with: systemctl start $unit"
    else
        systemctl --root="$ROOT" enable --quiet $unit
        say "enabled $unit in $ROOT"
    fi
}

turn_dropin() {
    cat <<EOF
# Written by scripts/install.sh --turn: coturn with the edge-agent hub's settings.
[Service]
ExecStart=
ExecStart=/usr/bin/turnserver -c $TURN_CONF --pidfile=
EOF
}

# write_if_missing, owned by root and readable by GROUP (when accounts are ours to touch).
write_if_missing_as() {
    local path=$1 mode=$2 group=$3
    if kept_existing "$path"; then return; fi
    write_private "$path" "$mode"
    if [ "$DO_USER" = 1 ] && getent group "$group" >/dev/null; then chown "root:$group" "$path"; fi
    say "wrote $path"
}

# The unit as shipped, with ExecStart pointing into this prefix.
render_unit() {
    sed "s#$DEFAULT_PREFIX/venv/bin/#$PREFIX/venv/bin/#g" "$SOURCE/systemd/$1"
}

install_units() {
    local dir unit target
    dir=$(in_root /etc/systemd/system)
    mkdir -p "$dir"
    for unit in "${UNITS[@]}"; do
        target="$dir/$unit"
        if [ -f "$target" ] && render_unit "$unit" | cmp -s - "$target"; then
            continue
        fi
        render_unit "$unit" >"$target.tmp"
        chmod 0644 "$target.tmp"
        mv -f "$target.tmp" "$target"
        UNITS_CHANGED=1
        say "installed $target"
    done
}

enable_units() {
    local wanted=(edge-agent.service)
    [ "$WITH_HUB" = 0 ] || wanted+=(edge-hub.service)
    if [ "$DO_ENABLE" = 0 ]; then
        say "not enabling (--no-enable); later: systemctl enable --now ${wanted[*]}"
        return
    fi
    if ! command -v systemctl >/dev/null; then
        say "no systemctl here; enable later with: systemctl enable --now ${wanted[*]}"
        return
    fi
    if live_system; then
        [ "$UNITS_CHANGED" = 0 ] || systemctl daemon-reload
        systemctl enable --quiet "${wanted[@]}"
        if [ "$UNITS_CHANGED" = 1 ] || [ "$PROJECT_CHANGED" = 1 ]; then
            # Running services pick up the new code or unit; stopped ones stay stopped.
            systemctl try-restart "${UNITS[@]}"
        fi
        say "enabled ${wanted[*]}; start with: systemctl start ${wanted[*]}"
    else
        # No service manager to talk to (scratch root, image build): link the units offline.
        systemctl --root="$ROOT" enable --quiet "${wanted[@]}"
        say "enabled ${wanted[*]} in $ROOT"
    fi
}

do_install() {
    PROJECT_CHANGED=0
    UNITS_CHANGED=0
    TURN_CHANGED=0
    install_packages
    create_user
    create_venv
    install_project
    write_settings
    install_units
    configure_turn
    enable_units
    enable_turn
    say "done: settings in $(in_root /etc/edge-agent), logs with: journalctl -u edge-agent"
}

# --- uninstall ---------------------------------------------------------------------------

do_uninstall() {
    local unit dir prefix
    dir=$(in_root /etc/systemd/system)
    if command -v systemctl >/dev/null; then
        if live_system; then
            systemctl disable --now --quiet "${UNITS[@]}" 2>/dev/null || true
        else
            systemctl --root="$ROOT" disable --quiet "${UNITS[@]}" 2>/dev/null || true
        fi
    fi
    for unit in "${UNITS[@]}"; do
        if [ -e "$dir/$unit" ]; then
            rm -f "$dir/$unit"
            say "removed $dir/$unit"
        fi
    done
    if [ -e "$(in_root "$TURN_DROPIN")" ]; then
        # The packaged coturn goes back to its own settings (and stays as enabled as it was).
        rm -f "$(in_root "$TURN_DROPIN")"
        rmdir "$(dirname "$(in_root "$TURN_DROPIN")")" 2>/dev/null || true
        say "removed $(in_root "$TURN_DROPIN")"
    fi
    ! live_system || systemctl daemon-reload
    prefix=$(in_root "$PREFIX")
    if [ -d "$prefix" ]; then
        # Only ever delete a prefix this script made.
        [ -d "$prefix/venv" ] || [ -f "$prefix/.source-stamp" ] \
            || die "$prefix does not look like an edge-agent install; not removing it"
        rm -rf "$prefix"
        say "removed $prefix"
    fi
    if [ "$PURGE" = 0 ]; then
        say "kept settings in $(in_root /etc/edge-agent) and state in $(in_root /var/lib) (--purge removes them)"
        return
    fi
    rm -rf "$(in_root /etc/edge-agent)" "$(in_root /var/lib/edge-agent)" "$(in_root /var/lib/edge-hub)" \
        "$(in_root "$TURN_CONF")"
    say "removed settings and state"
    if [ "$DO_USER" = 1 ] && id "$SERVICE_USER" >/dev/null 2>&1; then
        userdel "$SERVICE_USER"
        say "removed user $SERVICE_USER"
    fi
}

BUILD_DIR=
cleanup() { [ -z "$BUILD_DIR" ] || rm -rf "$BUILD_DIR"; }

main() {
    trap cleanup EXIT
    parse_args "$@"
    [ "$ACTION" = uninstall ] || require_64_bit  # removing stays possible everywhere
    require_root_user
    umask 022
    if [ "$ACTION" = uninstall ]; then
        do_uninstall
    else
        do_install
    fi
}

main "$@"
