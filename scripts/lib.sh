# Shared by scripts/quickstart and scripts/test. Source it; do not run it.

# System packages the cloud needs on every host (Debian 12).
GUMTREE_SYSTEM_PACKAGES=(
  gcc pkg-config libvirt-dev
  libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
  dnsmasq-base iptables iproute2 conntrack busybox-static openssl procps
)

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ensure_packages PKG...: installs the missing ones, quietly; does nothing when all are present.
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}); run as root to install them"
  say "installing ${missing[*]}"
  # No systemd here: keep package scripts from trying to start services.
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1
  fi
  local log; log=$(mktemp)
  apt-get update -qq >"$log" 2>&1 || { cat "$log" >&2; die "apt-get update failed"; }
  # Some images carry a newer qemu-utils (a backport) that breaks Debian's
  # qemu-system: take qemu-utils at the same version as qemu-system-x86.
  local extra=()
  if printf '%s\n' "${missing[@]}" | grep -qx qemu-system-x86; then
    local ver
    ver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    [ -n "$ver" ] && [ "$ver" != "(none)" ] && extra=("qemu-utils=$ver" --allow-downgrades)
    local keep=() m
    for m in "${missing[@]}"; do [ "$m" = qemu-utils ] || keep+=("$m"); done
    missing=("${keep[@]}")
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" "${extra[@]}" >"$log" 2>&1; then
    [ $created_policy -eq 1 ] && rm -f "$policy"
    cat "$log" >&2; rm -f "$log"
    die "apt-get install failed"
  fi
  [ $created_policy -eq 1 ] && rm -f "$policy"
  rm -f "$log"
}

# ensure_cargo: the Rust toolchain comes with the machine (rustup); say so clearly if not.
ensure_cargo() {
  command -v cargo >/dev/null 2>&1 || {
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  }
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup (see README)"
}

# aws_cli: the AWS CLI the project installs (Debian's), else whatever `aws` is.
aws_cli() {
  if [ -x /usr/bin/aws ]; then echo /usr/bin/aws; else command -v aws; fi
}

# alive NAME: a process of that name runs (zombies do not count).
alive() {
  ps -eo stat=,comm= | awk -v n="$1" '$2 == n && $1 !~ /^Z/ {found = 1} END {exit !found}'
}

# kvm_usable PROBE TINY_DIR: KVM really runs a Linux guest here. PROBE is
# the node controller's gumtree-probe-kvm, the same proof `hypervisor =
# "auto"` makes: the tiny guest's kernel and initramfs (TINY_DIR) must print
# their boot marker under KVM within its deadline. A boot sector proves
# nothing: on nested or paravirtual hosts one runs while Linux hangs.
kvm_usable() {
  local probe=$1 tiny=$2 verdict
  [ -e /dev/kvm ] || { say "no /dev/kvm: guests run under QEMU TCG"; return 1; }
  verdict=$("$probe" --kernel "$tiny/vmlinuz" --initrd "$tiny/initrd.gz" 2>&1) && { say "$verdict"; return 0; }
  say "${verdict:-the KVM probe failed}"
  return 1
}

# start_libvirt MARKER_DIR PROBE TINY_DIR: starts virtlogd and libvirtd when
# they are not running (there is no systemd to do it), noting in MARKER_DIR
# which ones we started. Where KVM does not work (kvm_usable PROBE TINY_DIR),
# libvirtd gets its own mount namespace in which /dev/kvm is hidden: it then
# runs guests under TCG and does not re-probe QEMU (about 45 s) on every
# domain definition.
#
# With GUMTREE_LIBVIRT_NETNS set (scripts/test does), a libvirtd started here
# lives in that network namespace (made if missing, deleted again by
# stop_libvirt): guests' taps, bridges, dnsmasq and NAT rules stay out of
# the host's network.
start_libvirt() {
  local marks=$1 probe=$2 tiny=$3 ns=${GUMTREE_LIBVIRT_NETNS:-}
  mkdir -p "$marks"
  if ! alive virtlogd; then
    virtlogd -d && touch "$marks/virtlogd.started"
  fi
  if ! alive libvirtd; then
    local in_ns=()
    if [ -n "$ns" ]; then
      if [ ! -e "/run/netns/$ns" ]; then
        ip netns add "$ns" && touch "$marks/netns.created"
      fi
      ip netns exec "$ns" ip link set lo up
      # nsenter changes only the network namespace (ip netns exec would
      # also remount /sys, hiding the cgroup mounts from libvirtd).
      in_ns=(nsenter "--net=/run/netns/$ns")
    fi
    # scripts/host-libvirt starts the libvirtds of simulated hosts alike.
    export GUMTREE_KVM_WORKS=0
    if kvm_usable "$probe" "$tiny"; then
      GUMTREE_KVM_WORKS=1
      "${in_ns[@]}" libvirtd -d && touch "$marks/libvirtd.started"
    else
      say "KVM is missing or does not work here: guests run under QEMU TCG"
      # libvirtd gets a /dev without kvm: a copy of /dev (device nodes,
      # links, and the mounts below it bound in again) on a tmpfs, minus
      # kvm. With no /dev/kvm libvirt keeps its cached QEMU capabilities;
      # a stand-in file bound over /dev/kvm either looks usable (and makes
      # it re-probe QEMU, ~16 s, on every definition) or breaks the private
      # /dev it builds for each guest.
      "${in_ns[@]}" unshare --mount --propagation private bash -c '
        set -e
        . "$1"
        mount_dev_without_kvm /run/gumtree-dev
        exec libvirtd -d' _ "${BASH_SOURCE[0]}" \
        && touch "$marks/libvirtd.started"
    fi
  fi
  local i
  for i in $(seq 1 100); do
    [ -S /var/run/libvirt/libvirt-sock ] && return 0
    sleep 0.2
  done
  die "libvirtd did not open its socket; see /var/log/libvirt/libvirtd.log"
}

# mount_dev_without_kvm STAGING: in a mount namespace of its own, puts
# over /dev a copy of it without kvm: its device nodes and links on a tmpfs
# mounted at STAGING first, the mounts below /dev bound in again.
mount_dev_without_kvm() {
  local d=$1 m
  mkdir -p "$d"
  mount -t tmpfs -o mode=0755,nosuid gumtree-dev "$d"
  cp -ax /dev/. "$d"/
  rm -f "$d/kvm"
  for m in $(awk '$2 ~ "^/dev/" {print $2}' /proc/self/mounts); do
    [ -d "$m" ] || continue
    mkdir -p "$d${m#/dev}"
    mount --rbind "$m" "$d${m#/dev}"
  done
  mount --move "$d" /dev
}

# stop_libvirt MARKER_DIR: stops the libvirt daemons start_libvirt started.
stop_libvirt() {
  local marks=$1 d
  for d in libvirtd virtlogd; do
    if [ -e "$marks/$d.started" ]; then
      pkill -TERM -x "$d" 2>/dev/null || true
      local i
      for i in $(seq 1 150); do alive "$d" || break; sleep 0.1; done
      rm -f "$marks/$d.started"
    fi
  done
  if [ -e "$marks/netns.created" ] && [ -n "${GUMTREE_LIBVIRT_NETNS:-}" ]; then
    # Whatever still runs in it (a dnsmasq a failed test left) goes too.
    local pid
    for pid in $(ip netns pids "$GUMTREE_LIBVIRT_NETNS" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    ip netns del "$GUMTREE_LIBVIRT_NETNS" 2>/dev/null || true
    rm -f "$marks/netns.created"
  fi
}
