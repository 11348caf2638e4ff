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
  # With GUMTREE_LIBVIRT_TLS="PKI_DIR NODE ADDRESS", libvirtd also listens
  # for other nodes' libvirtds (libvirt_tls; its pkipath is MARKER_DIR/
  # libvirt-tls), with a configuration of its own in MARKER_DIR.
  local args=()
  mkdir -p "$marks"
  if [ -n "${GUMTREE_LIBVIRT_TLS:-}" ]; then
    local pki node address
    read -r pki node address <<< "$GUMTREE_LIBVIRT_TLS"
    cp /etc/libvirt/libvirtd.conf "$marks/libvirtd.conf"
    libvirt_tls "$marks/libvirtd.conf" "$marks/libvirt-tls" "$pki" "$node" "$address"
    args=(--listen -f "$marks/libvirtd.conf")
  fi
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
      "${in_ns[@]}" libvirtd -d "${args[@]}" && touch "$marks/libvirtd.started"
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
        shift
        exec libvirtd -d "$@"' _ "${BASH_SOURCE[0]}" "${args[@]}" \
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

# libvirt_tls CONF TLS_DIR PKI_DIR NODE ADDRESS: makes libvirtd.conf CONF
# listen with TLS on ADDRESS:16514 with node NODE's certificate (from its
# internal_tls directory PKI_DIR: ca.pem, nc-NODE.pem and .key, issued with
# `pki issue nc NODE --ip ADDRESS`; 0.0.0.0 listens on every address of
# its namespace) and take only peers whose certificates
# the cluster CA issued to nodes; TLS_DIR gets the files libvirt wants, and
# is the pkipath for dialling another node (live migration).
libvirt_tls() {
  local conf=$1 tls=$2 pki=$3 node=$4 address=$5 f
  for f in ca.pem "nc-$node.pem" "nc-$node.key"; do
    [ -s "$pki/$f" ] || die "no $pki/$f for the node's libvirt TLS"
  done
  mkdir -p "$tls"
  install -m 644 "$pki/ca.pem" "$tls/cacert.pem"
  install -m 644 "$pki/nc-$node.pem" "$tls/clientcert.pem"
  install -m 600 "$pki/nc-$node.key" "$tls/clientkey.pem"
  sed -i '/^[# ]*\(listen_tls\|listen_tcp\|listen_addr\|key_file\|cert_file\|ca_file\|tls_allowed_dn_list\) *=/d' "$conf"
  cat >> "$conf" <<CONF
listen_tls = 1
listen_tcp = 0
listen_addr = "$address"
key_file = "$tls/clientkey.pem"
cert_file = "$tls/clientcert.pem"
ca_file = "$tls/cacert.pem"
tls_allowed_dn_list = ["O=Gumtree,OU=nc,CN=*"]
CONF
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

# tier_binary TIER: the program a tier (clc, walrus, sc, cc, nc or nc-K) runs.
tier_binary() {
  case $1 in
    clc) echo cloud-controller ;; cc) echo cluster-controller ;; nc|nc-*) echo node-controller ;;
    sc) echo storage-controller ;; walrus) echo walrus ;;
  esac
}

# virt_line: what the cloud's first node runs guests under, and why, from
# the caller's `admin` (its gumtree-admin).
virt_line() {
  admin -o json describe-nodes 2>/dev/null | python3 -c '
import json, sys
for n in json.load(sys.stdin):
    print(n["hypervisor"] + ": " + n["virt_reason"]); break' 2>/dev/null || echo unknown
}

# set_figure FILE WHAT SECONDS: the line of FILE (a cloud's measured
# figures, which scripts/nested-demo prints next to its own) for WHAT.
set_figure() {
  { grep -v "^$2 " "$1" 2>/dev/null || true; printf '%-46s %s s\n' "$2" "$3"; } > "$1.tmp"
  mv "$1.tmp" "$1"
}

# free_slash24 LINK KEEP CANDIDATE...: a /24 (its first three octets) for a
# network of the caller's own: KEEP when set (what the caller already uses),
# else the first CANDIDATE whose /24 overlaps no address and no route of
# this host in any table, the routes through LINK (the caller's own) aside.
# A CANDIDATE may also be rfc6598 (100.64.0.0/10) or rfc2544
# (198.18.0.0/15): each of their /24s in turn.
free_slash24() {
  local link=$1 keep=$2; shift 2
  [ -n "$keep" ] && { echo "$keep"; return 0; }
  { ip -4 -o addr show | awk -v l="$link" '$2 != l {print "addr", $4}'
    { ip -4 route show table all | grep -v " dev $link\( \|$\)" || true; } | sed 's/^/route /'; } \
    | python3 -c '
import ipaddress, sys
taken = []
for line in sys.stdin:
    words = line.split()
    if words[0] == "addr":
        taken.append(ipaddress.ip_interface(words[1]).network)
        continue
    words = words[1:]
    if words and words[0] in ("unicast", "local", "broadcast", "multicast", "blackhole",
                              "unreachable", "prohibit", "throw", "nat", "anycast"):
        words = words[1:]
    if words and words[0] != "default":
        try:
            taken.append(ipaddress.ip_network(words[0], strict=False))
        except ValueError:
            pass
ranges = {"rfc6598": "100.64.0.0/10", "rfc2544": "198.18.0.0/15"}
for c in sys.argv[1:]:
    nets = ipaddress.ip_network(ranges[c]).subnets(new_prefix=24) if c in ranges \
        else [ipaddress.ip_network(c + ".0/24")]
    for pool in nets:
        if not any(pool.overlaps(t) for t in taken):
            print(str(pool.network_address).rsplit(".", 1)[0])
            sys.exit(0)
' "$@"
}

# write_eucarc_file FILE EC2_URL S3_URL CA_FILE CLC SECRET_FILE PKI_DIR BIN_DIR:
# the eucarc of a cloud (sourced by users), with the eucalyptus account's
# admin key pair, which `admin` (the caller's gumtree-admin for that cloud)
# reads.
write_eucarc_file() {
  local file=$1 ec2=$2 s3=$3 ca=$4 clc=$5 secret_file=$6 pki=$7 bin=$8 line key secret
  line=$(admin describe-access-keys --show-secrets --account eucalyptus | awk '$2 == "admin" {print $3, $4; exit}')
  key=${line% *}; secret=${line#* }
  [ -n "$key" ] && [ -n "$secret" ] || die "could not read the admin access key"
  local ca_line=""
  case "$ec2$s3" in *https:*) ca_line="export AWS_CA_BUNDLE=$ca" ;; esac
  (umask 077; cat > "$file" <<RC
# Credentials and endpoints of a Gumtree cloud: source this file.
export AWS_ACCESS_KEY_ID=$key
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_DEFAULT_REGION=gumtree
export AWS_ENDPOINT_URL_EC2=$ec2/
export AWS_ENDPOINT_URL_S3=$s3/
export AWS_ENDPOINT_URL_CLOUDWATCH=$ec2/services/CloudWatch
$ca_line
export EC2_URL=$ec2/services/compute
export S3_URL=$s3/services/objectstorage
export AWS_CLOUDWATCH_URL=$ec2/services/CloudWatch
export EC2_ACCESS_KEY=\$AWS_ACCESS_KEY_ID
export EC2_SECRET_KEY=\$AWS_SECRET_ACCESS_KEY
export GUMTREE_CLC=$clc
export GUMTREE_SECRET_FILE=$secret_file
export GUMTREE_PKI_DIR=$pki
export PATH=$bin:\$PATH
RC
  )
}

# register_tiny_guest EUCARC TINY_DIR: uploads the tiny guest's kernel,
# ramdisk and disk to the cloud's Walrus and registers them as public
# images, once; prints the machine image's id.
register_tiny_guest() {
  local eucarc=$1 dir=$2
  # shellcheck disable=SC1090
  . "$eucarc"
  local aws=(env -u AWS_PROFILE "$(aws_cli)")
  [ -n "${AWS_CA_BUNDLE:-}" ] && aws+=(--ca-bundle "$AWS_CA_BUNDLE")
  local ec2=(--endpoint-url "$AWS_ENDPOINT_URL_EC2" --region "$AWS_DEFAULT_REGION")
  local s3=(--endpoint-url "$AWS_ENDPOINT_URL_S3" --region "$AWS_DEFAULT_REGION")
  local have
  have=$("${aws[@]}" "${ec2[@]}" ec2 describe-images --owners self \
    --filters Name=name,Values=gumtree-tiny --query 'Images[0].ImageId' --output text 2>&1) \
    || die "describe-images failed: $have"
  if [ -n "$have" ] && [ "$have" != "None" ]; then
    echo "$have"
    return 0
  fi
  local bucket=gumtree-images
  "${aws[@]}" "${s3[@]}" s3 mb "s3://$bucket" >/dev/null 2>&1 || true
  "${aws[@]}" "${s3[@]}" s3 cp --quiet --metadata image-type=kernel "$dir/vmlinuz" "s3://$bucket/tiny/vmlinuz"
  "${aws[@]}" "${s3[@]}" s3 cp --quiet --metadata image-type=ramdisk "$dir/initrd.gz" "s3://$bucket/tiny/initrd.gz"
  "${aws[@]}" "${s3[@]}" s3 cp --quiet "$dir/disk.img" "s3://$bucket/tiny/disk.img"
  local aki ari ami
  aki=$("${aws[@]}" "${ec2[@]}" ec2 register-image --name gumtree-tiny-kernel \
    --image-location "$bucket/tiny/vmlinuz" --query ImageId --output text)
  ari=$("${aws[@]}" "${ec2[@]}" ec2 register-image --name gumtree-tiny-ramdisk \
    --image-location "$bucket/tiny/initrd.gz" --query ImageId --output text)
  ami=$("${aws[@]}" "${ec2[@]}" ec2 register-image --name gumtree-tiny \
    --description "Gumtree tiny guest: Debian cloud kernel, busybox" \
    --image-location "$bucket/tiny/disk.img" --kernel-id "$aki" --ramdisk-id "$ari" \
    --query ImageId --output text)
  local id
  for id in "$aki" "$ari" "$ami"; do
    "${aws[@]}" "${ec2[@]}" ec2 modify-image-attribute --image-id "$id" \
      --launch-permission 'Add=[{Group=all}]'
  done
  say "registered the tiny guest: $ami (kernel $aki, ramdisk $ari)"
  echo "$ami"
}

# ensure_python_clients: the test clients in a virtualenv (AWS CLI v1, boto3,
# s3cmd, boto 2.49 and Playwright from PyPI), installed once; exports
# GUMTREE_PYTHON, GUMTREE_AWS_V1, GUMTREE_AWS_V2 (Debian's), GUMTREE_S3CMD
# and GUMTREE_CHROMIUM (Debian's chromium, which Playwright drives).
ensure_python_clients() {
  local PY VENV PY_CLIENTS
  # boto 2.49 imports on Python 3.11 at the newest.
  PY=${GUMTREE_TEST_PYTHON:-python3}
  "$PY" -c 'import sys; sys.exit(sys.version_info[:2] > (3, 11))' \
    || die "$PY is newer than 3.11; boto 2.49 needs 3.11 (set GUMTREE_TEST_PYTHON)"
  VENV=${GUMTREE_TEST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/gumtree/venv}
  PY_CLIENTS=("awscli>=1.29,<2" "boto3>=1.28" "awscrt" "s3cmd>=2.3" "boto==2.49.0" "playwright>=1.40,<2")
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV" 2>/dev/null || { ensure_packages python3-venv; "$PY" -m venv "$VENV"; }
  fi
  if ! "$VENV/bin/python" -c 'import boto, boto3, awscli, awscrt, S3, playwright' 2>/dev/null; then
    say "installing Python clients into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_CLIENTS[@]}"
  fi
  export GUMTREE_PYTHON=$VENV/bin/python
  export GUMTREE_AWS_V1=$VENV/bin/aws
  export GUMTREE_AWS_V2=/usr/bin/aws
  export GUMTREE_S3CMD=$VENV/bin/s3cmd
  export GUMTREE_CHROMIUM=/usr/bin/chromium
}
