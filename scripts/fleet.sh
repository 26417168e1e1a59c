#!/usr/bin/env bash
# The fleet test site (docs/fleet.md): several MV6 hypervisors on this one machine, each a
# systemd-nspawn --boot container with its own root filesystem (a copy-on-write overlay over
# one cached mmdebstrap root), PID 1 (systemd), network namespace, sshd, libvirtd, nftables
# and QEMU guests, reached by the controller over SSH only.
#
#   scripts/fleet.sh up               build or reuse everything; print how to reach each host
#   scripts/fleet.sh down             remove everything it created; diff this machine's record
#   scripts/fleet.sh status           what is up
#   scripts/fleet.sh restart HOST     reboot a host: its kernel state (bridge, taps, nft
#                                     tables, sysctls) is lost, as on a real reboot
#   scripts/fleet.sh cut HOST         unplug the host's management link (unreachable)
#   scripts/fleet.sh mend HOST        plug it in again
#   scripts/fleet.sh router PLAN SITE configure the parallel router from a plan (a, b)
#   scripts/fleet.sh probe start|stop NAME   probe every host's critical native service
#   scripts/fleet.sh ssh HOST [CMD]   a shell (or a command) on a host, as the controller
#
# Topology, all made here (addresses are documentation prefixes only). Nothing of it is in
# this machine's root network namespace, so other tests can run beside the fleet:
#   namespace mv6f-ctl: the controller's management side. Only the SSH client
#                                 ($state/bin/ssh, the inventories' ansible_ssh_executable and
#                                 libvirt's qemu+ssh:// command) and the image server run in it
#     mv6f-mN  --- mgmt0 of hvN   management, one link per host: 203.0.113.(4N-3)/30 to
#                                 203.0.113.(4N-2)/30 (IPv4-native hosts), 2001:db8:ff:N::1/64
#                                 to ::2 (IPv6-native hosts)
#   namespace mv6f-lan: bridge "lan", the native site LAN (lan0 of every host) and the prober
#                                 198.51.100.62/26 and 2001:db8:100::62/64
#   namespace mv6f-par: the parallel L2 switch, one bridge per VLAN ("vl<VID>") over VLAN
#                                 subinterfaces of the trunk ports (this kernel has no bridge
#                                 vlan_filtering), tagged only: an untagged frame goes nowhere. Trunk to par0 of hvN: VLAN 100
#                                 (site a, layout shared: uplink mv6sh0) and 10N (site a,
#                                 per_host: uplink mv6up0) on IPv4-native hosts, 200 on
#                                 IPv6-native ones (site b: uplink par0.200). Port "rtr": all.
#   namespace mv6f-rtr: the parallel router (r0.100, r0.10N, r0.200), configured from the plan
# Hosts hv1..hv3 are IPv4-native (site a, MV6 scenario 1); hv4 is IPv6-native (site b,
# scenario 2). MV6_FLEET_HOSTS picks a subset (for example "hv1 hv2 hv3").
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
state=${MV6_FLEET_STATE:-/var/lib/mv6-fleet}
cache=${MV6_FLEET_CACHE:-/var/cache/mv6-fleet}
all_hosts=(hv1 hv2 hv3 hv4)
read -r -a hosts <<<"${MV6_FLEET_HOSTS:-${all_hosts[*]}}"
lan_ns=mv6f-lan
par_ns=mv6f-par
rtr_ns=mv6f-rtr
ctl_ns=mv6f-ctl
critical_port=7070
image_port=8099
ssh_conf=/etc/ssh/ssh_config.d/mv6-fleet.conf
# What the shared root filesystem holds: the roles install nothing (a host's namespace has
# no route to a package registry). Changing this list builds a new cached root.
packages=(
  systemd-sysv dbus openssh-server python3 python3-apt python3-libvirt python3-lxml
  iproute2 nftables python3-nftables libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
  procps kmod sudo e2fsprogs
  # what the plan keeper's module needs (mv6.transition.plan_keeper; hv1 keeps a plan in the
  # AWX job tests)
  python3-yaml python3-netaddr
)
rootfs_version=1
segments=(100 101 102 103 104 105 106 107 108 109 200)

say() { printf 'fleet: %s\n' "$*"; }
die() {
  printf 'fleet: %s\n' "$*" >&2
  exit 1
}
[[ $(id -u) -eq 0 ]] || die "run as root"

host_index() { # hvN -> N
  local n=${1#hv}
  [[ $n =~ ^[1-9]$ ]] || die "unknown host '$1' (hv1..hv9)"
  echo "$n"
}
native_family() { # host -> ipv4|ipv6
  if [[ $1 == hv4 ]]; then echo ipv6; else echo ipv4; fi
}
mgmt_addr() { # host side|host -> address/len
  local n
  n=$(host_index "$1")
  if [[ $(native_family "$1") == ipv4 ]]; then
    if [[ $2 == controller ]]; then echo "203.0.113.$((4 * n - 3))/30"; else echo "203.0.113.$((4 * n - 2))/30"; fi
  else
    if [[ $2 == controller ]]; then echo "2001:db8:ff:$n::1/64"; else echo "2001:db8:ff:$n::2/64"; fi
  fi
}
native_addr() { # host -> address/len on the native site LAN
  local n
  n=$(host_index "$1")
  if [[ $(native_family "$1") == ipv4 ]]; then echo "198.51.100.$((10 + n))/26"; else echo "2001:db8:100::$((10 + n))/64"; fi
}
ns_of() { echo "mv6f-$1"; }
pidfile() { echo "$state/$1/nspawn.pid"; }
running() { [[ -f $(pidfile "$1") ]] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }
leader() { # the container's PID 1, seen from here (not nspawn's short-lived helper child)
  local c
  for c in $(pgrep -P "$(cat "$(pidfile "$1")")"); do
    if grep -Eq '^NSpid:[[:space:]]+[0-9]+[[:space:]]+1$' "/proc/$c/status" 2>/dev/null; then
      echo "$c"
      return 0
    fi
  done
  return 1
}
in_host() { # host command... (as root inside the container, no SSH: set-up only)
  local h=$1
  shift
  nsenter -t "$(leader "$h")" -a "$@"
}
ssh_to() { # host command...
  local h=$1
  shift
  local addr
  addr=$(mgmt_addr "$h" host)
  "$state/bin/ssh" -F /dev/null -o BatchMode=yes -o ConnectTimeout=5 \
    -i "$state/ssh/id_ed25519" "root@${addr%/*}" "$@"
}

# The controller's SSH client: ssh, in the management namespace, with the fleet's known hosts.
# Ansible runs it as ansible_ssh_executable; libvirt's qemu+ssh:// as its command= (it passes
# no options of ours, so the known hosts are given here).
ssh_client() {
  mkdir -p "$state/bin"
  printf '%s\n' '#!/bin/sh' \
    '# Written by mv6.transition scripts/fleet.sh; removed by "fleet.sh down".' \
    "exec nsenter --net=/run/netns/$ctl_ns -- ssh -o UserKnownHostsFile=$state/known_hosts \\" \
    '  -o StrictHostKeyChecking=yes "$@"' >"$state/bin/ssh.tmp"
  chmod 0755 "$state/bin/ssh.tmp"
  mv "$state/bin/ssh.tmp" "$state/bin/ssh"
}

# ------------------------------------------------------------------ the machine's record

others() { grep -v -- "$1" | sort || true; }

record_machine() { # file: what this machine looks like outside what the fleet makes
  {
    echo "# links"
    ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | others '^mv6f-'
    echo "# addresses"
    ip -o addr show | awk '{print $2, $4}' | others '^mv6f-'
    echo "# routes"
    { ip -4 route show table all; ip -6 route show table all; } | others 'mv6f-'
    echo "# namespaces"
    ip netns list | awk '{print $1}' | others '^mv6f-'
    echo "# nftables tables"
    nft list tables | sort
    echo "# mounts"
    awk '{print $2}' /proc/mounts | others "^$state\|/mv6f-"
    echo "# ssh client config"
    find /etc/ssh/ssh_config.d/ -mindepth 1 -printf "%f\n" 2>/dev/null | sort
  } >"$1"
}

leftovers() { # what of the fleet is still there: nothing, after down
  ip netns list | awk '{print "namespace " $1}' | grep ' mv6f-' || true
  ip -o link show | awk -F': ' '{print "link " $2}' | grep ' mv6f-' || true
  awk '{print "mount " $2}' /proc/mounts | grep -F " $state" || true
  local h
  for h in "${all_hosts[@]}"; do
    if running "$h"; then echo "container $h"; fi
  done
  [[ -e $ssh_conf ]] && echo "file $ssh_conf"
  return 0
}

# ------------------------------------------------------------------ the root filesystem

rootfs_key() {
  printf '%s\n' "$rootfs_version" "${packages[@]}" | sha256sum | cut -c1-16
}

build_rootfs() {
  local key dir
  key=$(rootfs_key)
  dir=$cache/rootfs-$key
  if [[ -f $dir/.complete ]]; then
    say "root filesystem cached: $dir"
    echo "$dir" >"$state/rootfs"
    return
  fi
  say "building the shared root filesystem with mmdebstrap (about a minute)"
  rm -rf "$dir" "$dir.tmp"
  mkdir -p "$cache"
  local list
  list=$(
    IFS=,
    echo "${packages[*]}"
  )
  # shellcheck disable=SC2016 # the hooks expand $1 in mmdebstrap, not here
  timeout 900 mmdebstrap --variant=minbase --include="$list" \
    --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
    --customize-hook='sed -i "s/^#\? *cgroup_controllers = .*/cgroup_controllers = [ ]/" "$1"/etc/libvirt/qemu.conf' \
    --customize-hook='grep -q "^cgroup_controllers = \[ \]" "$1"/etc/libvirt/qemu.conf' \
    --customize-hook='chroot "$1" systemctl enable systemd-networkd.service' \
    --customize-hook='chroot "$1" systemctl mask systemd-networkd-wait-online.service' \
    --customize-hook='rm -f "$1"/etc/machine-id "$1"/var/lib/dbus/machine-id; : >"$1"/etc/machine-id' \
    bookworm "$dir.tmp" >"$cache/mmdebstrap-$key.log" 2>&1 ||
    die "mmdebstrap failed; see $cache/mmdebstrap-$key.log"
  # The prober's and the critical service's program.
  install -D -m 0644 "$top/scripts/lab_site.py" "$dir.tmp/usr/local/lib/mv6-fleet/lab_site.py"
  cat >"$dir.tmp/etc/systemd/system/mv6f-critical.service" <<'EOF'
[Unit]
Description=The host's critical native service (fleet test site)
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=/etc/default/mv6f-critical
ExecStart=/usr/bin/python3 /usr/local/lib/mv6-fleet/lab_site.py serve ${ADDR} 7070 ${BANNER}
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
EOF
  chroot "$dir.tmp" systemctl enable mv6f-critical.service >/dev/null 2>&1
  touch "$dir.tmp/.complete"
  mv "$dir.tmp" "$dir"
  echo "$dir" >"$state/rootfs"
}

# ------------------------------------------------------------------ links and switches

ensure_ns() {
  ip netns list | awk '{print $1}' | grep -qx "$1" || ip netns add "$1"
  ip -n "$1" link set lo up
}

switches_up() {
  ensure_ns "$ctl_ns"
  ensure_ns "$lan_ns"
  ensure_ns "$par_ns"
  ensure_ns "$rtr_ns"
  if ! ip -n "$lan_ns" link show lan >/dev/null 2>&1; then
    ip -n "$lan_ns" link add lan type bridge stp_state 0
    ip -n "$lan_ns" addr add 198.51.100.62/26 dev lan
    ip netns exec "$lan_ns" sysctl -q -w net.ipv6.conf.lan.accept_ra=0
    ip -n "$lan_ns" addr add 2001:db8:100::62/64 dev lan nodad
    ip -n "$lan_ns" link set lan up
  fi
  local v
  ip netns exec "$rtr_ns" sysctl -q -w net.ipv6.conf.all.forwarding=1 net.ipv4.ip_forward=1
  for v in "${segments[@]}"; do
    if ! ip -n "$par_ns" link show "seg$v" >/dev/null 2>&1; then
      ip -n "$par_ns" link add "seg$v" type bridge stp_state 0 mcast_snooping 0
      ip netns exec "$par_ns" sysctl -q -w "net.ipv6.conf.seg$v.disable_ipv6=1"
      ip -n "$par_ns" link set "seg$v" up
    fi
    if ! ip -n "$rtr_ns" link show "r$v" >/dev/null 2>&1; then
      switch_port "rtr$v" "r$v" "$rtr_ns" "$v"
      ip -n "$rtr_ns" link set "r$v" up
    fi
  done
}

switch_port() { # port-name peer-name peer-namespace segment: a cable from the switch
  ip -n "$par_ns" link add "$1" type veth peer name "$2" netns "$3"
  ip netns exec "$par_ns" sysctl -q -w "net.ipv6.conf.$1.disable_ipv6=1"
  ip -n "$par_ns" link set "$1" master "seg$4" up
}

# The host's cables: management to the controller, native LAN, parallel uplink (a trunk).
plug_host() {
  local h=$1 n ns
  n=$(host_index "$h")
  ns=$(ns_of "$h")
  if ! ip -n "$ctl_ns" link show "mv6f-m$n" >/dev/null 2>&1; then
    ip -n "$ctl_ns" link add "mv6f-m$n" type veth peer name mgmt0 netns "$ns"
    if [[ $(native_family "$h") == ipv6 ]]; then
      ip netns exec "$ctl_ns" sysctl -q -w "net.ipv6.conf.mv6f-m$n.accept_ra=0"
      ip -n "$ctl_ns" addr add "$(mgmt_addr "$h" controller)" dev "mv6f-m$n" nodad
    else
      ip netns exec "$ctl_ns" sysctl -q -w "net.ipv6.conf.mv6f-m$n.disable_ipv6=1"
      ip -n "$ctl_ns" addr add "$(mgmt_addr "$h" controller)" dev "mv6f-m$n"
    fi
    ip -n "$ctl_ns" link set "mv6f-m$n" up
  fi
  if ! ip -n "$lan_ns" link show "lan$n" >/dev/null 2>&1; then
    ip -n "$lan_ns" link add "lan$n" type veth peer name lan0 netns "$ns"
    ip -n "$lan_ns" link set "lan$n" master lan up
  fi
  if [[ $(native_family "$h") == ipv6 ]]; then
    ip -n "$par_ns" link show "p${n}s200" >/dev/null 2>&1 || switch_port "p${n}s200" mv6up0 "$ns" 200
  else
    ip -n "$par_ns" link show "p${n}s100" >/dev/null 2>&1 || switch_port "p${n}s100" mv6sh0 "$ns" 100
    ip -n "$par_ns" link show "p${n}s$((100 + n))" >/dev/null 2>&1 ||
      switch_port "p${n}s$((100 + n))" mv6up0 "$ns" "$((100 + n))"
  fi
}

unplug_host() {
  local h=$1 n
  n=$(host_index "$h")
  ip -n "$ctl_ns" link del "mv6f-m$n" 2>/dev/null || true
  ip -n "$lan_ns" link del "lan$n" 2>/dev/null || true
  local port
  for port in $(ip -n "$par_ns" -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep "^p${n}s" || true); do
    ip -n "$par_ns" link del "$port"
  done
  ip netns del "$(ns_of "$h")" 2>/dev/null || true
}

# ------------------------------------------------------------------ hosts

# The host's own configuration, written once into its copy-on-write layer: hostname, SSH
# host keys and the controller's key, its native addresses (systemd-networkd, so that they
# come back after a reboot) and the VLAN subinterface of its parallel uplink.
configure_host() {
  local h=$1 root=$2 n mgmt native fam
  n=$(host_index "$h")
  [[ -f $state/$h/.configured ]] && return
  fam=$(native_family "$h")
  mgmt=$(mgmt_addr "$h" host)
  native=$(native_addr "$h")
  echo "$h" >"$root/etc/hostname"
  ssh-keygen -q -t ed25519 -N '' -C "root@$h" -f "$root/etc/ssh/ssh_host_ed25519_key"
  install -d -m 0700 "$root/root/.ssh"
  install -m 0600 "$state/ssh/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
  local v6_other=""
  if [[ $fam == ipv4 ]]; then v6_other=$'LinkLocalAddressing=no\nIPv6AcceptRA=no'; else v6_other=$'LinkLocalAddressing=ipv6\nIPv6AcceptRA=no'; fi
  cat >"$root/etc/systemd/network/10-mgmt0.network" <<EOF
# Management link to the controller (fleet test site).
[Match]
Name=mgmt0

[Network]
Address=$mgmt
$v6_other
EOF
  cat >"$root/etc/systemd/network/20-lan0.network" <<EOF
# The native site LAN (fleet test site).
[Match]
Name=lan0

[Network]
Address=$native
$v6_other
EOF
  # The parallel uplinks (mv6sh0, mv6up0) are spare NICs: nothing here configures them;
  # roles/hypervisor makes the one the site names a port of the parallel bridge.
  printf 'ADDR=%s\nBANNER=critical-%s\n' "${native%/*}" "$h" >"$root/etc/default/mv6f-critical"
  # The v4-native hosts are IPv4-only on their native links; nothing else is configured.
  if [[ $fam == ipv4 ]]; then
    cat >"$root/etc/sysctl.d/10-mv6f-native.conf" <<EOF
# IPv4-native host (fleet test site): no IPv6 on the native links.
net.ipv6.conf.mgmt0.disable_ipv6 = 1
net.ipv6.conf.lan0.disable_ipv6 = 1
EOF
  fi
  touch "$state/$h/.configured"
}

start_host() {
  local h=$1 lower root
  running "$h" && return
  lower=$(cat "$state/rootfs")
  root=$state/$h/root
  mkdir -p "$state/$h/upper" "$state/$h/work" "$root"
  if ! mountpoint -q "$root"; then
    mount -t overlay "mv6f-$h" -o "lowerdir=$lower,upperdir=$state/$h/upper,workdir=$state/$h/work" "$root"
  fi
  configure_host "$h" "$root"
  # --private-network: a new network namespace at every boot, so that a restart loses the
  # kernel's network state as a reboot does (and /proc/sys/net is writable inside, which
  # nspawn does not allow with --network-namespace-path). The cables are plugged in once the
  # container runs. CAP_NET_ADMIN: libvirtd makes the guests' taps; /dev/net/tun: their device.
  setsid systemd-nspawn -D "$root" --boot --register=no --keep-unit --console=passive \
    --machine="mv6f-$h" --hostname="$h" --private-network \
    --bind=/dev/net/tun --capability=CAP_NET_ADMIN --resolv-conf=off --timezone=off \
    --link-journal=no >"$state/$h/console.log" 2>&1 </dev/null 9>&- &
  echo $! >"$(pidfile "$h")"
  local pid=""
  for _ in $(seq 100); do
    pid=$(leader "$h" || true)
    [[ -n $pid ]] && [[ $(readlink "/proc/$pid/ns/net" 2>/dev/null) != "$(readlink /proc/self/ns/net)" ]] && break
    pid=""
    sleep 0.1
  done
  [[ -n $pid ]] || die "$h: the container did not start (console: $state/$h/console.log)"
  ip netns attach "$(ns_of "$h")" "$pid"
  plug_host "$h"
}

wait_ssh() {
  local h=$1 deadline=$((SECONDS + ${2:-90}))
  until ssh_to "$h" true 2>/dev/null; do
    ((SECONDS < deadline)) || die "$h: no SSH within ${2:-90} s (console: $state/$h/console.log)"
    running "$h" || die "$h: the container stopped (console: $state/$h/console.log)"
    sleep 1
  done
}

stop_host() {
  local h=$1 pid
  if running "$h"; then
    pid=$(cat "$(pidfile "$h")")
    in_host "$h" systemctl poweroff >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      say "$h did not power off in 30 s: killing it"
      pkill -KILL -P "$pid" 2>/dev/null || true
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
    fi
  fi
  rm -f "$(pidfile "$h")"
  if mountpoint -q "$state/$h/root"; then umount "$state/$h/root" || umount -l "$state/$h/root"; fi
}

known_hosts() {
  local h addr
  : >"$state/known_hosts.tmp"
  for h in "${hosts[@]}"; do
    addr=$(mgmt_addr "$h" host)
    printf '%s %s\n' "${addr%/*}" "$(cut -d' ' -f1,2 "$state/$h/root/etc/ssh/ssh_host_ed25519_key.pub")" >>"$state/known_hosts.tmp"
  done
  mv "$state/known_hosts.tmp" "$state/known_hosts"
}

# The fleet's own golden image directory, cached between runs like the root filesystem and
# apart from /var/lib/mv6/images, which the lab, the tests and a purging teardown share.
fleet_images_dir=${MV6_FLEET_IMAGES:-$cache/images}

images() {
  [[ -s $state/images.yml ]] && return
  say "building the golden images on the controller (cached in $fleet_images_dir)"
  [[ -x $top/.venv/bin/ansible-playbook ]] || die "no venv: run 'make setup' first"
  PATH="$top/.venv/bin:$PATH" ANSIBLE_CONFIG="$top/ansible.cfg" timeout 2400 \
    "$top/.venv/bin/ansible-playbook" -i localhost, -c local \
    -e ansible_python_interpreter="$top/.venv/bin/python" -e fleet_images_file="$state/images.yml" \
    -e mv6_golden_image_dir="$fleet_images_dir" -e mv6_golden_image_build_dir="$cache/golden-build" \
    "$top/scripts/fleet_images.yml" >"$state/images-build.log" 2>&1 ||
    die "the golden image build failed; see $state/images-build.log"
}

# One import list per host, with the URL of the controller's end of its management link
# (the golden_image role's import path: URL + sha256). The inventories read it.
import_lists() {
  local h addr
  for h in "${hosts[@]}"; do
    addr=$(mgmt_addr "$h" controller)
    addr=${addr%/*}
    [[ $addr == *:* ]] && addr="[$addr]"
    "$top/.venv/bin/python" - "$state/images.yml" "http://$addr:$image_port/" >"$state/imports-$h.json" <<'EOF'
import json, sys

import yaml

base = sys.argv[2]
out = []
for image in yaml.safe_load(open(sys.argv[1])):
    out.append({
        "name": image["name"], "src": base + image["file"], "sha256": image["sha256"],
        "format": "qcow2",
        "kernel": {"src": base + image["kernel_file"], "sha256": image["kernel_sha256"]},
        "initrd": {"src": base + image["initrd_file"], "sha256": image["initrd_sha256"]},
    })
print(json.dumps(out, indent=1))
EOF
  done
}

image_server() {
  # The golden images, served to the hosts over their management links (the
  # golden_image role's import path: URL + sha256).
  local pid=$state/images.pid h addrs=()
  if [[ -f $pid ]] && kill -0 "$(cat "$pid")" 2>/dev/null; then return; fi
  for h in "${hosts[@]}"; do addrs+=("$(mgmt_addr "$h" controller)"); done
  setsid nsenter --net="/run/netns/$ctl_ns" -- python3 "$top/scripts/fleet_site.py" serve-images "$fleet_images_dir" \
    "$image_port" "${addrs[@]%/*}" >"$state/images.log" 2>&1 </dev/null 9>&- &
  echo $! >"$pid"
}

up() {
  local start=$SECONDS h
  mkdir -p "$state"
  [[ -f $state/machine-before.txt ]] || record_machine "$state/machine-before.txt"
  if [[ ! -f $state/ssh/id_ed25519 ]]; then
    mkdir -p "$state/ssh"
    ssh-keygen -q -t ed25519 -N '' -C mv6-fleet-controller -f "$state/ssh/id_ed25519"
  fi
  build_rootfs
  images
  switches_up
  for h in "${hosts[@]}"; do start_host "$h"; done
  for h in "${hosts[@]}"; do
    for _ in $(seq 100); do [[ -s $state/$h/root/etc/ssh/ssh_host_ed25519_key.pub ]] && break; sleep 0.1; done
  done
  known_hosts
  ssh_client
  import_lists
  image_server
  for h in "${hosts[@]}"; do wait_ssh "$h" 120; done
  say "up in $((SECONDS - start)) s"
  status
}

kill_ns_processes() { # namespace
  local pids
  pids=$(ip netns pids "$1" 2>/dev/null || true)
  [[ -n $pids ]] || return 0
  # shellcheck disable=SC2086 # one word per pid
  kill $pids 2>/dev/null || true
  for _ in $(seq 20); do
    [[ -z $(ip netns pids "$1" 2>/dev/null) ]] && return 0
    sleep 0.2
  done
  # shellcheck disable=SC2046 # one word per pid
  kill -KILL $(ip netns pids "$1" 2>/dev/null) 2>/dev/null || true
}

down() {
  local start=$SECONDS h rc=0
  probe_stop_all
  if [[ -f $state/images.pid ]]; then kill "$(cat "$state/images.pid")" 2>/dev/null || true; rm -f "$state/images.pid"; fi
  for h in "${all_hosts[@]}"; do stop_host "$h"; unplug_host "$h"; done
  # The router's services and radvd, and anything else started in the site's namespaces.
  kill_ns_processes "$rtr_ns"
  kill_ns_processes "$lan_ns"
  kill_ns_processes "$ctl_ns"
  ip netns del "$ctl_ns" 2>/dev/null || true
  ip netns del "$rtr_ns" 2>/dev/null || true
  ip netns del "$par_ns" 2>/dev/null || true
  ip netns del "$lan_ns" 2>/dev/null || true
  rm -f "$ssh_conf" # written by the fleet before its management side had a namespace
  local left
  left=$(leftovers)
  if [[ -n $left ]]; then
    printf '%s\n' "$left" >&2
    say "the fleet left the objects above behind"
    rc=1
  fi
  if [[ -f $state/machine-before.txt ]]; then
    record_machine "$state/machine-after.txt"
    if ! diff -u "$state/machine-before.txt" "$state/machine-after.txt"; then
      if [[ ${MV6_FLEET_SHARED_MACHINE:-0} == 1 ]]; then
        # make test runs the other tiers beside the fleet: what they made and removed
        # meanwhile is theirs. The fleet's own objects are checked above, strictly.
        say "this machine changed while the fleet was up (above); other tests share it (MV6_FLEET_SHARED_MACHINE=1)"
      else
        say "this machine differs from its record before the fleet (above)"
        rc=1
      fi
    fi
  fi
  if ((rc == 0)); then
    rm -rf "$state"
    say "down in $((SECONDS - start)) s; this machine is as before (the root filesystem stays cached in $cache)"
  fi
  return $rc
}

status() {
  local h n
  for h in "${all_hosts[@]}"; do
    n=$(host_index "$h")
    if running "$h"; then
      printf '%s  up    %-5s native %-20s %s/bin/ssh -i %s root@%s\n' \
        "$h" "$(native_family "$h")" "$(native_addr "$h")" "$state" "$state/ssh/id_ed25519" \
        "$(mgmt_addr "$h" host | cut -d/ -f1)"
    elif [[ -d $state/$h ]]; then
      printf '%s  down\n' "$h"
    fi
  done
  [[ -d $state ]] || say "no fleet"
}

restart() {
  local h=$1
  stop_host "$h"
  # A reboot loses the kernel's state: links, the bridge, taps, nft tables, sysctls. The
  # host's namespace goes with it; its cables are plugged into a fresh one.
  unplug_host "$h"
  start_host "$h"
  wait_ssh "$h" 120
}

cut_mgmt() { ip -n "$ctl_ns" link set "mv6f-m$(host_index "$1")" down; }
mend_mgmt() { ip -n "$ctl_ns" link set "mv6f-m$(host_index "$1")" up; }

probe() { # start|stop NAME
  local verb=$1 name=$2 h addr
  case $verb in
    start)
      for h in "${hosts[@]}"; do
        addr=$(native_addr "$h")
        ip netns exec "$lan_ns" setsid python3 "$top/scripts/lab_site.py" probe "${addr%/*}" \
          "$critical_port" "critical-$h" "$state/probe-$name-$h.log" </dev/null >/dev/null 2>&1 9>&- &
        echo $! >"$state/probe-$name-$h.pid"
      done
      ;;
    stop)
      local failed=0
      for h in "${hosts[@]}"; do
        [[ -f $state/probe-$name-$h.pid ]] || continue
        kill "$(cat "$state/probe-$name-$h.pid")" 2>/dev/null || true
        rm -f "$state/probe-$name-$h.pid"
        local ok bad
        ok=$(grep -c ' ok' "$state/probe-$name-$h.log" || true)
        bad=$(grep -c ' FAIL' "$state/probe-$name-$h.log" || true)
        printf '%s %s ok=%s failed=%s\n' "$name" "$h" "$ok" "$bad"
        ((bad == 0)) || failed=1
      done
      return $failed
      ;;
    *) die "probe start|stop NAME" ;;
  esac
}

probe_stop_all() {
  local f
  for f in "$state"/probe-*.pid; do
    [[ -f $f ]] || continue
    kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
}

# One change of the fleet at a time (up, down, restart, cut, mend): they share namespaces,
# mounts and pid files. Everything started in the background closes fd 9 (9>&-): a
# container or server that kept it would hold the lock for as long as it runs.
case ${1:-} in
  up | down | restart | cut | mend)
    exec 9>/run/mv6-fleet.lock
    flock -w 900 9 || die "another fleet.sh holds /run/mv6-fleet.lock"
    ;;
esac

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  restart) restart "${2:?host}" ;;
  cut) cut_mgmt "${2:?host}" ;;
  mend) mend_mgmt "${2:?host}" ;;
  router) exec "$top/.venv/bin/python" "$top/scripts/fleet_site.py" router "${2:?plan file}" "${3:?site a or b}" "$rtr_ns" ;;
  probe) probe "${2:?start|stop}" "${3:?name}" ;;
  ssh)
    h=${2:?host}
    shift 2
    ssh_to "$h" "$@"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
    exit 2
    ;;
esac
