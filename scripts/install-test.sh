#!/usr/bin/env bash
# Install test of the Debian package, on a fresh Debian 12 machine as root, without containers:
#
#   1. tools: the Rust toolchain (scripts/setup.sh), cargo-deb 3.x, lintian, debootstrap, socat,
#      systemd (for systemd-analyze)
#   2. build the .deb (release) with `cargo deb`, and a second revision of it for the upgrade
#   3. lintian: no error or warning (justified overrides ship in the package)
#   4. a fresh Debian 12 root: `debootstrap --variant=minbase` + adduser + systemd, cached in
#      target/install-test/base, under a new overlay (or copy) for every run
#   5. install with the root's own apt and dpkg in a chroot (apt fetches missing Depends; the
#      maintainer scripts need the target's adduser, getent, dpkg-statoverride and
#      deb-systemd-helper); check files, owners, modes, the user, conffiles, the unit enabled
#   6. systemd-analyze verify and security (exposure must stay <= 2.0) on the INSTALLED unit
#   7. run the INSTALLED binary as the caregate user with the shipped configuration (ports moved
#      to free loopback ports), a notify socket standing in for systemd: READY=1, /readyz 200,
#      one HL7 message sent with `caregate send` gets AA, SIGTERM stops it cleanly (STOPPING=1),
#      the message is in the queue
#   8. upgrade to revision 2 (queue, edited conffile, user kept), remove (data, config, user
#      kept), purge (all gone)
#
# Idempotent: every run starts from a new copy of the base root. Prints the time of each step.
# Usage: scripts/install-test.sh
# shellcheck disable=SC2016 # dpkg-query formats (${Version}) are single-quoted on purpose
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

WORK=$REPO/target/install-test
BASE=$WORK/base
ROOT=$WORK/root
LOGS=$WORK/logs
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CARGO_DEB_VERSION=3.8.0
# Original acknowledgement mode (MSH-15/16 empty): the answer is AA, not CA.
FIXTURE=tests/fixtures/hl7/oru_r01_specimen_and_device.hl7
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$HOME/.cargo/bin:$PATH
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

[ "$(id -u)" -eq 0 ] || { echo "install-test: must run as root (debootstrap, chroot, dpkg)" >&2; exit 1; }

# --- helpers -------------------------------------------------------------------------------

T0=$(date +%s.%N)
STEP="" STEP_T=$T0
TIMINGS=()
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
step() {
  local now; now=$(date +%s.%N)
  if [ -n "$STEP" ]; then TIMINGS+=("$(printf '%6ss  %s' "$(elapsed "$STEP_T" "$now")" "$STEP")"); fi
  STEP=$1 STEP_T=$now
  [ -n "$STEP" ] && echo "== $STEP"
  return 0
}
ok() { echo "   ok: $*"; }
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
in_root() { chroot "$ROOT" "$@"; }
as_caregate() { chroot --userspec=caregate:caregate --groups=dialout "$ROOT" "$@"; }
# `stat` inside the root, so owner names come from the root's /etc/passwd.
expect_stat() { # PATH MODE OWNER:GROUP
  local got; got=$(in_root stat -c '%a %U:%G' "$1") || fail "$1: missing"
  [ "$got" = "$2 $3" ] || fail "$1: expected $2 $3, got $got"
  ok "$1 $got"
}
expect_absent() { [ ! -e "$ROOT$1" ] || fail "$1 still exists"; ok "$1 absent"; }
free_port() { # a loopback port nothing listens on
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  fail "no free port"
}
http_get() { # PORT PATH -> status line
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$2" >&3
    head -n1 <&3 | tr -d '\r'
  )
}

# DAEMON_PID: the daemon (for signals); WRAPPER_PID: the subshell that waits for it and exits
# with its status (the daemon dying of a signal would otherwise make bash print a job notice).
DAEMON_PID="" WRAPPER_PID="" NOTIFY_PID=""
cleanup() {
  if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then kill -KILL "$DAEMON_PID" || true; fi
  if [ -n "$NOTIFY_PID" ] && kill -0 "$NOTIFY_PID" 2>/dev/null; then kill "$NOTIFY_PID" || true; fi
  wait 2>/dev/null || true
  if mountpoint -q "$ROOT"; then umount "$ROOT" || true; fi
}
trap cleanup EXIT

# Starts the installed daemon as caregate with CONFIG (a path inside the root), a notify socket
# and the unit's UMask, plus any extra VAR=value; returns once READY=1 arrived.
start_daemon() {
  local config=$1 log=$2
  shift 2
  : >"$LOGS/notify.log"
  rm -f "$ROOT/run/caregate-notify.sock"
  socat -u "UNIX-RECV:$ROOT/run/caregate-notify.sock,mode=666" "OPEN:$LOGS/notify.log,append" &
  NOTIFY_PID=$!
  for _ in $(seq 50); do [ -S "$ROOT/run/caregate-notify.sock" ] && break; sleep 0.1; done
  rm -f "$LOGS/daemon.pid"
  (
    umask 0027
    chroot --userspec=caregate:caregate --groups=dialout "$ROOT" \
      env -i PATH=/usr/bin:/bin NOTIFY_SOCKET=/run/caregate-notify.sock CAREGATE_LOG=info \
      NO_COLOR=1 "$@" /usr/bin/caregate run --config "$config" 2>>"$log" &
    echo $! >"$LOGS/daemon.pid"
    exec 2>/dev/null # no "Hangup" job notice: the SIGHUP check below reports it itself
    wait $!
  ) &
  WRAPPER_PID=$!
  for _ in $(seq 50); do [ -s "$LOGS/daemon.pid" ] && break; sleep 0.1; done
  DAEMON_PID=$(cat "$LOGS/daemon.pid")
  for _ in $(seq 300); do
    grep -qx 'READY=1' "$LOGS/notify.log" && return 0
    kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$log" >&2; fail "daemon exited before READY=1"; }
    sleep 0.1
  done
  cat "$log" >&2
  fail "no READY=1 within 30s"
}
stop_daemon() { # expects a clean exit (status 0) within 30s
  kill -TERM "$DAEMON_PID"
  local status=0
  for _ in $(seq 300); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$DAEMON_PID" 2>/dev/null && fail "daemon still running 30s after SIGTERM"
  wait "$WRAPPER_PID" || status=$?
  DAEMON_PID="" WRAPPER_PID=""
  kill "$NOTIFY_PID" 2>/dev/null || true
  wait "$NOTIFY_PID" 2>/dev/null || true
  NOTIFY_PID=""
  [ "$status" -eq 0 ] || fail "daemon exited with status $status after SIGTERM"
}
queue_total() { # total_messages of `caregate queue stats` as caregate
  as_caregate /usr/bin/caregate queue stats --config /etc/caregate/caregate.toml --json |
    sed -n 's/^ *"total_messages": *\([0-9]*\),*$/\1/p'
}

# --- 1. tools ------------------------------------------------------------------------------

step "tools"
scripts/setup.sh
need_apt=()
command -v lintian >/dev/null || need_apt+=(lintian)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v socat >/dev/null || need_apt+=(socat)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v setpriv >/dev/null || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! cargo deb --version 2>/dev/null | grep -q "^cargo-deb $CARGO_DEB_VERSION\$"; then
  cargo install cargo-deb --version "=$CARGO_DEB_VERSION" --locked
fi
ok "$(cargo deb --version), $(lintian --version), $(systemd-analyze --version | head -n1)"

# --- 2. build ------------------------------------------------------------------------------

step "build .deb (cargo deb, release)"
mkdir -p "$LOGS" "$WORK/upgrade"
# The upgrade target first (same files, next Debian revision), because every `cargo deb` clears
# other versions out of target/debian/, where the package under test then stays.
DEB2=$(cargo deb --locked --fast --deb-revision 2 -o "$WORK/upgrade/" 2>"$LOGS/cargo-deb.log" |
  grep '\.deb$' | tail -n1) || { cat "$LOGS/cargo-deb.log" >&2; fail "cargo deb"; }
DEB=$(cargo deb --locked --no-build 2>>"$LOGS/cargo-deb.log" | grep '\.deb$' | tail -n1) ||
  { cat "$LOGS/cargo-deb.log" >&2; fail "cargo deb"; }
VERSION=$(dpkg-deb -f "$DEB" Version)
VERSION2=$(dpkg-deb -f "$DEB2" Version)
ok "$DEB ($(du -h "$DEB" | cut -f1), Depends: $(dpkg-deb -f "$DEB" Depends))"
ok "upgrade package $VERSION2"

# --- 3. lintian ----------------------------------------------------------------------------

step "lintian"
# As an unprivileged user (lintian warns when run as root) on a copy it can read.
cp "$DEB" "$WORK/lintian.deb" && chmod 0644 "$WORK/lintian.deb"
if ! setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME=/tmp \
  lintian --fail-on error,warning --info --display-level ">=pedantic" "$WORK/lintian.deb" \
  >"$LOGS/lintian.log" 2>&1; then
  cat "$LOGS/lintian.log" >&2
  fail "lintian"
fi
grep -v '^N:' "$LOGS/lintian.log" | sed 's/^/   /' || true
ok "no error or warning (overrides: packaging/deb/lintian-overrides)"

# --- 4. root -------------------------------------------------------------------------------

step "fresh Debian 12 root"
if [ ! -f "$BASE/.complete" ]; then
  rm -rf "$BASE"
  debootstrap --variant=minbase --include=adduser,systemd bookworm "$BASE" "$MIRROR" \
    >"$LOGS/debootstrap.log" 2>&1 || { tail -n 30 "$LOGS/debootstrap.log" >&2; fail "debootstrap"; }
  touch "$BASE/.complete"
  ok "debootstrap into $BASE"
fi
# The run's root: an overlay on the untouched base (a copy of 240 MB, and deleting it again,
# take half a minute on a busy disk); a plain copy where overlayfs cannot be mounted.
if mountpoint -q "$ROOT"; then umount "$ROOT"; fi
rm -rf "$ROOT" "$WORK/overlay"
mkdir -p "$ROOT" "$WORK/overlay/upper" "$WORK/overlay/work"
if mount -t overlay overlay \
  -o "lowerdir=$BASE,upperdir=$WORK/overlay/upper,workdir=$WORK/overlay/work" "$ROOT" 2>/dev/null; then
  ok "overlay on $BASE"
else
  cp -a "$BASE/." "$ROOT/"
  ok "copy of $BASE"
fi
# Never start services inside the root (the systemd snippets also check /run/systemd/system).
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d" && chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
cp "$DEB" "$ROOT/tmp/caregate_1.deb"
cp "$DEB2" "$ROOT/tmp/caregate_2.deb"
cp "$FIXTURE" "$ROOT/tmp/message.hl7"

# --- 5. install ----------------------------------------------------------------------------

step "install $VERSION (apt, pulls missing Depends)"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
{ in_root apt-get update -qq && in_root apt-get install -y -q --no-install-recommends /tmp/caregate_1.deb; } \
  >"$LOGS/apt-install.log" 2>&1 || { cat "$LOGS/apt-install.log" >&2; fail "apt-get install"; }
ok "apt installed: $(sed -n 's/^Setting up \([^ ]*\) .*/\1/p' "$LOGS/apt-install.log" | xargs)"
[ "$(in_root dpkg-query -W -f '${db:Status-Abbrev}' caregate)" = "ii " ] || fail "caregate not installed"
expect_stat /usr/bin/caregate 755 root:root
expect_stat /etc/caregate/caregate.toml 640 root:caregate
expect_stat /etc/default/caregate 644 root:root
expect_stat /var/lib/caregate 750 caregate:caregate
expect_stat /usr/lib/systemd/system/caregate.service 644 root:root
expect_stat /usr/share/man/man1/caregate.1.gz 644 root:root
expect_stat /usr/share/doc/caregate/copyright 644 root:root
expect_stat /usr/share/doc/caregate/README.md 644 root:root
conffiles=$(in_root dpkg-query -W -f '${Conffiles}' caregate | awk '{print $1}' | sort | xargs)
[ "$conffiles" = "/etc/caregate/caregate.toml /etc/default/caregate" ] || fail "conffiles: $conffiles"
ok "conffiles: $conffiles"
[ -L "$ROOT/etc/systemd/system/multi-user.target.wants/caregate.service" ] || fail "unit not enabled"
ok "caregate.service enabled (multi-user.target.wants), not started"
passwd=$(in_root getent passwd caregate) || fail "no caregate user"
IFS=: read -r _ _ uid gid _ home shell <<<"$passwd"
[ "$uid" -lt 1000 ] || fail "caregate uid $uid is not a system uid"
[ "$home" = /var/lib/caregate ] || fail "caregate home $home"
[ "$shell" = /usr/sbin/nologin ] || fail "caregate shell $shell"
in_root id -nG caregate | tr ' ' '\n' | grep -qx dialout || fail "caregate not in dialout"
ok "user caregate: uid $uid gid $gid home $home shell $shell groups $(in_root id -nG caregate)"
as_caregate /usr/bin/caregate check-config --config /etc/caregate/caregate.toml >/dev/null ||
  fail "caregate cannot read or validate the shipped configuration"
if chroot --userspec=nobody:nogroup "$ROOT" /usr/bin/caregate check-config \
  --config /etc/caregate/caregate.toml >/dev/null 2>&1; then
  fail "the configuration is readable by other users"
fi
ok "shipped configuration: valid for caregate, unreadable for others"

# --- 6. systemd-analyze --------------------------------------------------------------------

step "systemd-analyze verify + security (installed unit)"
# --root: read units (and resolve /usr/bin/caregate) in the installed root; --man=no: the man
# page is checked above, the host's man cannot see inside the root.
systemd-analyze verify --man=no --root="$ROOT" caregate.service >"$LOGS/verify.log" 2>&1 ||
  { cat "$LOGS/verify.log" >&2; fail "systemd-analyze verify"; }
[ ! -s "$LOGS/verify.log" ] || { cat "$LOGS/verify.log" >&2; fail "systemd-analyze verify printed warnings"; }
ok "systemd-analyze verify: clean"
# --threshold=20: fail above an exposure of 2.0.
systemd-analyze security --offline=true --root="$ROOT" --threshold=20 caregate.service \
  >"$LOGS/security.log" 2>&1 || { cat "$LOGS/security.log" >&2; fail "exposure above 2.0"; }
ok "$(grep -o 'Overall exposure level.*' "$LOGS/security.log")"

# --- 7. run --------------------------------------------------------------------------------

step "run the installed binary, send one message"
MLLP_PORT=$(free_port)
ADMIN_PORT=$(free_port)
# The shipped configuration with its two listeners moved to free loopback ports; data_dir stays
# /var/lib/caregate (the packaged state directory).
sed -e "s|^listen = \"127.0.0.1:9100\"|listen = \"127.0.0.1:$ADMIN_PORT\"|" \
  -e "s|^listen = \"0.0.0.0:2575\"|listen = \"127.0.0.1:$MLLP_PORT\"|" \
  "$ROOT/etc/caregate/caregate.toml" >"$ROOT/tmp/install-test.toml"
if ! grep -q "127.0.0.1:$ADMIN_PORT" "$ROOT/tmp/install-test.toml" ||
  ! grep -q "127.0.0.1:$MLLP_PORT" "$ROOT/tmp/install-test.toml"; then
  fail "the shipped configuration no longer has the listeners this test moves"
fi
chmod 0644 "$ROOT/tmp/install-test.toml"
start_daemon /tmp/install-test.toml "$LOGS/daemon.log"
ok "READY=1 received ($(grep -c . "$LOGS/notify.log") notifications so far)"
readyz=$(http_get "$ADMIN_PORT" /readyz)
[[ "$readyz" == "HTTP/1."[01]" 200 "* ]] || fail "/readyz: $readyz"
ok "/readyz 200 on 127.0.0.1:$ADMIN_PORT"
reply=$(in_root /usr/bin/caregate send --to "127.0.0.1:$MLLP_PORT" /tmp/message.hl7) ||
  { echo "$reply" >&2; fail "caregate send"; }
echo "$reply" | grep -q ': AA ' || fail "expected AA, got: $reply"
ok "send: $reply"
stop_daemon
grep -qx 'STOPPING=1' "$LOGS/notify.log" || fail "no STOPPING=1"
ok "SIGTERM: exit 0, notifications: $(paste -sd' ' "$LOGS/notify.log")"
[ "$(queue_total)" = 1 ] || fail "queue holds $(queue_total) messages, expected 1"
ok "queue stats: 1 message in /var/lib/caregate"
expect_stat /var/lib/caregate/queue.redb 640 caregate:caregate

step "systemd contract: watchdog and reload"
start_daemon /tmp/install-test.toml "$LOGS/daemon-contract.log" WATCHDOG_USEC=2000000
for _ in $(seq 40); do grep -qx 'WATCHDOG=1' "$LOGS/notify.log" && break; sleep 0.1; done
grep -qx 'WATCHDOG=1' "$LOGS/notify.log" \
  || fail "no WATCHDOG=1 within 4s of WATCHDOG_USEC=2s: systemd would restart the daemon every WatchdogSec"
ok "WATCHDOG=1 within 4s of WATCHDOG_USEC=2s"
kill -HUP "$DAEMON_PID"
sleep 1
kill -0 "$DAEMON_PID" 2>/dev/null || fail "SIGHUP (ExecReload=) stopped the daemon"
ok "SIGHUP (ExecReload=): still running"
stop_daemon
[ "$(queue_total)" = 1 ] || fail "queue changed: $(queue_total) messages"
ok "queue still holds 1 message"

# --- 8. upgrade, remove, purge -------------------------------------------------------------

step "upgrade $VERSION -> $VERSION2"
echo "# edited by the operator (install test)" >>"$ROOT/etc/caregate/caregate.toml"
in_root dpkg -i --force-confdef --force-confold /tmp/caregate_2.deb >"$LOGS/dpkg-upgrade.log" 2>&1 ||
  { cat "$LOGS/dpkg-upgrade.log" >&2; fail "upgrade"; }
[ "$(in_root dpkg-query -W -f '${Version}' caregate)" = "$VERSION2" ] || fail "version after upgrade"
grep -q '^# edited by the operator' "$ROOT/etc/caregate/caregate.toml" || fail "conffile edit lost"
ok "edited conffile kept"
expect_stat /etc/caregate/caregate.toml 640 root:caregate
expect_stat /var/lib/caregate 750 caregate:caregate
[ "$(in_root id -u caregate)" = "$uid" ] || fail "caregate uid changed"
[ "$(queue_total)" = 1 ] || fail "queue lost its message on upgrade"
ok "queue kept (1 message), uid $uid kept"

step "remove (data kept)"
in_root dpkg -r caregate >"$LOGS/dpkg-remove.log" 2>&1 || { cat "$LOGS/dpkg-remove.log" >&2; fail "remove"; }
expect_absent /usr/bin/caregate
expect_absent /usr/lib/systemd/system/caregate.service
[ -f "$ROOT/var/lib/caregate/queue.redb" ] || fail "queue removed by dpkg -r"
[ -f "$ROOT/etc/caregate/caregate.toml" ] || fail "configuration removed by dpkg -r"
in_root getent passwd caregate >/dev/null || fail "user removed by dpkg -r"
ok "queue, configuration and user kept"

step "reinstall, then purge (data removed)"
in_root dpkg -i /tmp/caregate_2.deb >"$LOGS/dpkg-reinstall.log" 2>&1 ||
  { cat "$LOGS/dpkg-reinstall.log" >&2; fail "reinstall"; }
[ "$(queue_total)" = 1 ] || fail "queue not found again after reinstall"
ok "reinstalled over the kept data: queue still holds 1 message"
in_root dpkg -P caregate >"$LOGS/dpkg-purge.log" 2>&1 || { cat "$LOGS/dpkg-purge.log" >&2; fail "purge"; }
[ -z "$(in_root dpkg-query -W -f '${db:Status-Abbrev}' caregate 2>/dev/null)" ] ||
  fail "caregate still known to dpkg: $(in_root dpkg-query -W -f '${db:Status-Abbrev}' caregate)"
expect_absent /var/lib/caregate
expect_absent /etc/caregate
expect_absent /etc/default/caregate
expect_absent /etc/systemd/system/multi-user.target.wants/caregate.service
expect_absent /etc/systemd/system/caregate.service
! in_root getent passwd caregate >/dev/null || fail "user caregate still exists"
! in_root getent group caregate >/dev/null || fail "group caregate still exists"
ok "user and group caregate removed"

step ""
echo "== timings"
printf '%s\n' "${TIMINGS[@]}"
printf '%6ss  total\n' "$(elapsed "$T0" "$(date +%s.%N)")"
echo "install-test: all passed"
