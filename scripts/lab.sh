#!/usr/bin/env bash
# The local MV6 lab (docs/lab.md): this machine is the hypervisor; the rest of the site is
# network namespaces and veth pairs made here.
#
#   scripts/lab.sh up     [lab|lab_v4]   set-up, simulated site, site.yml, plan, audit, proofs
#   scripts/lab.sh recheck [lab|lab_v4]  site.yml again (changed=0) and --check (changed=0,
#                                        nothing changed), on a lab that is up
#   scripts/lab.sh down   [lab|lab_v4]   teardown.yml (purge), remove the site, diff the host
#   scripts/lab.sh status [lab|lab_v4]
#   scripts/lab.sh site-up|site-down [lab|lab_v4]   only the simulated site, without MV6
#
# The inventory is inventories/<name> (default: lab, scenario 1; lab_v4 is scenario 2; or
# MV6_LAB_INVENTORY). MV6_LAB_IGNORE_INTERFACES (space-separated patterns) and MV6_LAB_IGNORE_TABLES
# (comma-separated "FAMILY NAME" patterns) name host interfaces and nftables tables that other
# work on this machine creates or changes during the run, so that the native-state checks do
# not blame MV6 for them.
#
# The lab owns: namespaces mv6lab-native and mv6lab-par, veths mv6lab-nat0/1 (the native
# link) and mv6lab-up0/1 (the parallel uplink), the services and the prober in
# /var/lib/mv6lab. Test traffic stays on these veths and on the parallel bridge.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
cmd=${1:-}
inv=${2:-${MV6_LAB_INVENTORY:-lab}}
state=/var/lib/mv6lab
run_dir=$state/$inv
venv_python=$top/.venv/bin/python
site_py=$top/scripts/lab_site.py
native_ns=mv6lab-native
par_ns=mv6lab-par
critical_port=7070
parallel_port=8080
critical_banner="mv6lab critical native service"
parallel_banner="mv6lab parallel service"

case "$inv" in
  lab)
    native_family=ipv4
    host_native=198.51.100.193/26
    peer_native=198.51.100.194/26
    parallel_peer=2001:db8:600::1/64
    ;;
  lab_v4)
    native_family=ipv6
    host_native=2001:db8:100::1/64
    peer_native=2001:db8:100::2/64
    parallel_peer=203.0.113.1/24
    ;;
  *)
    echo "lab.sh: unknown lab inventory '$inv' (lab or lab_v4)" >&2
    exit 2
    ;;
esac
peer_native_addr=${peer_native%/*}
parallel_peer_addr=${parallel_peer%/*}
inventory=$top/inventories/$inv/hosts.yml
plan_file=$run_dir/mv6_plan.yml

say() { printf '\n=== lab: %s\n' "$*"; }
die() {
  printf 'lab: %s\n' "$*" >&2
  exit 1
}

ansible_env() {
  export PATH="$top/.venv/bin:$PATH" ANSIBLE_CONFIG="$top/ansible.cfg"
}

# Extra vars for every playbook run: the interfaces and nft tables to ignore, and
# MV6_LAB_EXTRA_VARS (a JSON object, for benchmarks: bench/libvirt_reprobe_bench.py).
extra_vars() {
  "$venv_python" - "${MV6_LAB_IGNORE_INTERFACES:-}" "${MV6_LAB_IGNORE_TABLES:-}" "${MV6_LAB_EXTRA_VARS:-}" <<'EOF'
import json, sys
print(json.dumps({
    "mv6_native_state_ignore_interfaces": sys.argv[1].split(),
    "mv6_native_state_ignore_tables": [t.strip() for t in sys.argv[2].split(",") if t.strip()],
    **(json.loads(sys.argv[3]) if sys.argv[3].strip() else {}),
}))
EOF
}

# --- native state of the whole host, before `up` and after `down` ------------------------
# Nothing is excluded here, not even what MV6 owns: after `down` the host must be exactly as
# before `up`, MV6's bridge, taps and table included (they must be gone).
native_state() { # op label
  local args
  args=$(mktemp)
  "$venv_python" - "$1" "$2" "$state" "${MV6_LAB_IGNORE_INTERFACES:-}" \
    "${MV6_LAB_IGNORE_TABLES:-}" >"$args" <<'EOF'
import json, sys
op, label, state_dir, ignore, tables = sys.argv[1:6]
params = {"op": op, "state_dir": state_dir,
          "exclude_interfaces": ignore.split(),
          "exclude_tables": [t.strip() for t in tables.split(",") if t.strip()]}
params["label" if op == "record" else "against"] = label
print(json.dumps({"ANSIBLE_MODULE_ARGS": params}))
EOF
  PYTHONPATH="$top/.collections" "$venv_python" -m \
    ansible_collections.mv6.transition.plugins.modules.native_state "$args"
  rm -f "$args"
}

# --- background processes, by pid file ---------------------------------------------------
start_bg() { # pidfile logfile command...
  local pidfile=$1 log=$2
  shift 2
  setsid "$@" >>"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

stop_bg() { # pidfile
  local pidfile=$1 pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

probe_start() { # phase
  : >"$run_dir/probe-$1.log"
  start_bg "$run_dir/probe.pid" "$run_dir/probe-$1.err" \
    "$venv_python" "$site_py" probe "$peer_native_addr" "$critical_port" \
    "$critical_banner" "$run_dir/probe-$1.log"
}

probe_stop() { # phase -> prints the summary, returns 1 on any failed probe
  local total failed
  stop_bg "$run_dir/probe.pid"
  read -r total failed < <("$venv_python" "$site_py" count "$run_dir/probe-$1.log")
  echo "critical native service ($peer_native_addr port $critical_port): $total probes, $failed failed"
  [[ $failed == 0 && $total -gt 0 ]]
}

# --- the simulated site -------------------------------------------------------------------
site_up() {
  ip netns list | grep -qw "$native_ns" || ip netns add "$native_ns"
  ip netns list | grep -qw "$par_ns" || ip netns add "$par_ns"
  ip -n "$native_ns" link set lo up
  ip -n "$par_ns" link set lo up

  # The native link: the host's end carries a native address, the peer runs the
  # critical service. The host end of an IPv4 link carries no IPv6 at all.
  if ! ip link show mv6lab-nat0 >/dev/null 2>&1; then
    ip link add mv6lab-nat0 type veth peer name mv6lab-nat1 netns "$native_ns"
    if [[ $native_family == ipv4 ]]; then
      sysctl -qw net.ipv6.conf.mv6lab-nat0.disable_ipv6=1
      ip netns exec "$native_ns" sysctl -qw net.ipv6.conf.mv6lab-nat1.disable_ipv6=1
      ip addr add "$host_native" dev mv6lab-nat0
    else
      ip addr add "$host_native" dev mv6lab-nat0 nodad
    fi
    if [[ $native_family == ipv4 ]]; then
      ip -n "$native_ns" addr add "$peer_native" dev mv6lab-nat1
    else
      ip -n "$native_ns" addr add "$peer_native" dev mv6lab-nat1 nodad
    fi
    ip link set mv6lab-nat0 up
    ip -n "$native_ns" link set mv6lab-nat1 up
  fi

  # The parallel uplink: roles/hypervisor enslaves the host end to the parallel bridge.
  # It never has an address on the host, not even a link-local one.
  if ! ip link show mv6lab-up0 >/dev/null 2>&1; then
    ip link add mv6lab-up0 type veth peer name mv6lab-up1 netns "$par_ns"
    sysctl -qw net.ipv6.conf.mv6lab-up0.disable_ipv6=1
    if [[ $parallel_peer == *:* ]]; then
      ip -n "$par_ns" addr add "$parallel_peer" dev mv6lab-up1 nodad
    else
      ip -n "$par_ns" addr add "$parallel_peer" dev mv6lab-up1
    fi
    ip link set mv6lab-up0 up
    ip -n "$par_ns" link set mv6lab-up1 up
  fi

  mkdir -p "$run_dir"
  if [[ ! -f $run_dir/critical.pid ]]; then
    start_bg "$run_dir/critical.pid" "$run_dir/critical.log" \
      ip netns exec "$native_ns" "$venv_python" "$site_py" serve \
      "$peer_native_addr" "$critical_port" "$critical_banner"
  fi
  if [[ ! -f $run_dir/parallel.pid ]]; then
    start_bg "$run_dir/parallel.pid" "$run_dir/parallel.log" \
      ip netns exec "$par_ns" "$venv_python" "$site_py" serve \
      "$parallel_peer_addr" "$parallel_port" "$parallel_banner"
  fi
  # Scenario 1: the parallel peer is the IPv6 router of the parallel segment (RAs).
  if [[ $inv == lab && ! -f $run_dir/radvd.pid ]] && command -v radvd >/dev/null; then
    ip netns exec "$par_ns" sysctl -qw net.ipv6.conf.all.forwarding=1
    cat >"$run_dir/radvd.conf" <<EOF
interface mv6lab-up1 {
  AdvSendAdvert on;
  MinRtrAdvInterval 30;
  MaxRtrAdvInterval 60;
  prefix ${parallel_peer%::*}::/64 { AdvOnLink on; AdvAutonomous on; };
};
EOF
    chmod 0644 "$run_dir/radvd.conf"
    ip netns exec "$par_ns" radvd -C "$run_dir/radvd.conf" -p "$run_dir/radvd.pid" \
      -m logfile -l "$run_dir/radvd.log"
  fi
  for _ in $(seq 100); do
    timeout 2 bash -c "exec 3<>/dev/tcp/$peer_native_addr/$critical_port" 2>/dev/null && return 0
    sleep 0.1
  done
  die "the critical service on $peer_native_addr:$critical_port does not answer"
}

site_down() {
  stop_bg "$run_dir/probe.pid"
  stop_bg "$run_dir/critical.pid"
  stop_bg "$run_dir/parallel.pid"
  stop_bg "$run_dir/radvd.pid"
  ip netns del "$native_ns" 2>/dev/null || true
  ip netns del "$par_ns" 2>/dev/null || true
  # A veth goes with its peer's namespace; these only remain if the namespace was gone.
  ip link del mv6lab-nat0 2>/dev/null || true
  ip link del mv6lab-up0 2>/dev/null || true
}

# --- proofs ---------------------------------------------------------------------------------
failures=0
check() { # expectation description command...
  local want=$1 what=$2 got
  shift 2
  if "$@" >/dev/null 2>&1; then got=ok; else got=fails; fi
  if [[ $got == "$want" ]]; then
    printf '  PASS  %-60s (%s, as required)\n' "$what" "$got"
  else
    printf '  FAIL  %-60s (%s, must be %s)\n' "$what" "$got" "$want"
    failures=$((failures + 1))
  fi
}

guest_tcp() { # guest addr port banner
  "$venv_python" "$site_py" guest-exec "$1" /usr/bin/python3 -c \
    'import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); sys.exit(0 if s.recv(100).decode().strip() == sys.argv[3] else 1)' \
    "$2" "$3" "$4"
}

# One ICMP echo (lab_site.py ping: a raw socket, so no iputils needed).
host_ping() { # addr [dev]
  timeout 10 "$venv_python" "$site_py" ping "$@"
}

host_ping_on_parallel() { # addr: an L3 attempt bound to the parallel bridge (never eth0)
  host_ping "$1" mv6br0
}

par_ping() { # addr: from the parallel peer, over the parallel segment
  timeout 10 ip netns exec "$par_ns" "$venv_python" "$site_py" ping "$1"
}

prove() {
  local name addr ll
  say "reachability ($inv)"
  # Positive controls: the echo tool works, and the guests do answer an echo.
  check ok "host -> native peer $peer_native_addr (ICMP, bound to mv6lab-nat0)" \
    host_ping "$peer_native_addr" mv6lab-nat0
  while read -r name addr ll _; do
    check ok "parallel peer -> guest $name $addr (ICMP)" par_ping "$addr"
    check ok "guest $name -> parallel peer $parallel_peer_addr:$parallel_port" \
      guest_tcp "$name" "$parallel_peer_addr" "$parallel_port" "$parallel_banner"
    check fails "guest $name -> native peer $peer_native_addr:$critical_port" \
      guest_tcp "$name" "$peer_native_addr" "$critical_port" "$critical_banner"
    check fails "host -> guest $name $addr (bound to mv6br0)" host_ping_on_parallel "$addr"
    if [[ $ll != - ]]; then
      check fails "host -> guest $name $ll%mv6br0 (link-local)" host_ping_on_parallel "$ll%mv6br0"
    fi
    check fails "host route to guest $name goes via the parallel segment" \
      bash -c "ip route get $addr | grep -Eq 'dev (mv6br0|mv6p[0-9]+|mv6lab-up0) '"
  done < <("$venv_python" "$site_py" guests "$plan_file" localhost)
  check fails "host -> parallel peer $parallel_peer_addr (bound to mv6br0)" \
    host_ping_on_parallel "$parallel_peer_addr"
  check fails "host route to parallel peer goes via the parallel segment" \
    bash -c "ip route get $parallel_peer_addr | grep -Eq 'dev (mv6br0|mv6p[0-9]+|mv6lab-up0) '"
  check ok "host -> native peer $peer_native_addr:$critical_port" \
    timeout 3 bash -c "exec 3<>/dev/tcp/$peer_native_addr/$critical_port"
}

# --- commands -------------------------------------------------------------------------------
up() {
  [[ $(id -u) == 0 ]] || die "run as root"
  say "set-up (scripts/setup.sh)"
  bash "$top/scripts/setup.sh"
  ansible_env
  mkdir -p "$run_dir"

  if [[ ! -f $state/lab-baseline.json ]]; then
    say "recording the host's native state before the lab ($state/lab-baseline.json)"
    native_state record lab-baseline >/dev/null
  fi

  say "simulated site: namespaces $native_ns and $par_ns"
  site_up
  probe_start up
  trap 'stop_bg "$run_dir/probe.pid"' EXIT

  say "site.yml ($inventory)"
  local t0 rc=0
  t0=$(date +%s)
  ansible-playbook "$top/playbooks/site.yml" -i "$inventory" -e "$(extra_vars)" 2>&1 | tee "$run_dir/site.log" ||
    rc=$?
  echo "site.yml ($inv): $(($(date +%s) - t0)) s, exit $rc" | tee -a "$state/times.log"

  say "plan ($plan_file)"
  cat "$plan_file" "${plan_file%.yml}.d"/*.json 2>/dev/null || echo "(no plan file)"
  if [[ -f ${plan_file%.yml}.svg ]]; then
    echo "the plan's picture (docs/diagram.md): ${plan_file%.yml}.svg"
  fi

  say "audit (playbooks/verify.yml)"
  ansible-playbook "$top/playbooks/verify.yml" -i "$inventory" -e "$(extra_vars)" \
    -e "mv6_verify_report_dir=$run_dir/reports" >"$run_dir/verify.log" 2>&1 ||
    failures=$((failures + 1))
  cat "$run_dir"/reports/*.json 2>/dev/null || tail -n 30 "$run_dir/verify.log"

  ((rc == 0)) || failures=$((failures + 1))
  # The proofs run whatever site.yml said: they are independent evidence.
  if [[ -f $plan_file ]]; then prove; else failures=$((failures + 1)); fi

  say "native critical service during the run"
  probe_stop up || failures=$((failures + 1))
  trap - EXIT
  if ((failures > 0)); then
    say "lab is up with $failures failure(s); logs in $run_dir; 'scripts/lab.sh down' removes it"
    exit 1
  fi
  say "lab is up: all proofs passed; 'scripts/lab.sh down' removes it"
}

# The idempotence proofs on a lab that is up: site.yml again must report changed=0, and
# site.yml --check must report changed=0 and change nothing (the host's whole network state
# with MV6's parts included, the libvirt domains and the plan file are compared).
recheck() {
  [[ $(id -u) == 0 ]] || die "run as root"
  ansible_env
  [[ -f $plan_file ]] || die "the lab ($inv) is not up"
  local t0 rc=0
  probe_start recheck
  trap 'stop_bg "$run_dir/probe.pid"' EXIT

  say "site.yml, second run (must report changed=0)"
  t0=$(date +%s)
  ansible-playbook "$top/playbooks/site.yml" -i "$inventory" -e "$(extra_vars)" \
    >"$run_dir/site-rerun.log" 2>&1 || rc=$?
  echo "site.yml re-run ($inv): $(($(date +%s) - t0)) s, exit $rc" | tee -a "$state/times.log"
  recap_unchanged "$run_dir/site-rerun.log" "site.yml re-run" && ((rc == 0)) ||
    failures=$((failures + 1))

  say "site.yml --check (must report changed=0 and change nothing)"
  native_state record recheck-before >/dev/null
  virsh -q -c qemu:///system list --all >"$run_dir/domains-before.txt"
  sha256sum "$plan_file" "${plan_file%.yml}.d"/*.json >"$run_dir/plan.sha256"
  rc=0
  t0=$(date +%s)
  ansible-playbook "$top/playbooks/site.yml" -i "$inventory" -e "$(extra_vars)" --check \
    >"$run_dir/site-check.log" 2>&1 || rc=$?
  echo "site.yml --check ($inv): $(($(date +%s) - t0)) s, exit $rc" | tee -a "$state/times.log"
  recap_unchanged "$run_dir/site-check.log" "site.yml --check" && ((rc == 0)) ||
    failures=$((failures + 1))
  local result
  result=$(native_state compare recheck-before)
  if "$venv_python" -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1]).get("identical") else 1)' "$result"; then
    echo "  PASS  host network state unchanged by --check (MV6's bridge, taps and table included)"
  else
    echo "  FAIL  host network state changed by --check:"
    "$venv_python" -c 'import json,sys; print("\n".join(json.loads(sys.argv[1]).get("differences", [])))' "$result"
    failures=$((failures + 1))
  fi
  if virsh -q -c qemu:///system list --all | diff "$run_dir/domains-before.txt" - &&
    sha256sum -c --quiet "$run_dir/plan.sha256"; then
    echo "  PASS  libvirt domains and plan file unchanged by --check"
  else
    echo "  FAIL  libvirt domains or plan file changed by --check"
    failures=$((failures + 1))
  fi
  rm -f "$state/recheck-before.json"

  say "native critical service during the re-runs"
  probe_stop recheck || failures=$((failures + 1))
  trap - EXIT
  ((failures == 0)) || die "$failures idempotence failure(s); logs in $run_dir"
  say "idempotence proven: re-run changed=0, --check changed=0 and changed nothing"
}

recap_unchanged() { # log what: every host of the recap has changed=0 and failed=0
  local log=$1 what=$2 recap line
  recap=$(sed -n '/PLAY RECAP/,$p' "$log" | grep -E ' ok=')
  while IFS= read -r line; do echo "    $line"; done <<<"$recap"
  if grep -Eq 'changed=[1-9]' <<<"$recap"; then
    echo "  FAIL  $what: not changed=0 (the tasks that changed:)"
    grep -B1 -E '^changed:' "$log" | grep -E '^TASK' | sed 's/^/    /' || true
    return 1
  fi
  echo "  PASS  $what: changed=0 on every host"
  if grep -Eq 'failed=[1-9]|unreachable=[1-9]' <<<"$recap"; then
    echo "  FAIL  $what: a host failed or was unreachable (the audit's list is in $log)"
    return 1
  fi
}

down() {
  [[ $(id -u) == 0 ]] || die "run as root"
  ansible_env
  mkdir -p "$run_dir"
  local rc=0
  if ip netns list | grep -qw "$native_ns"; then
    probe_start down
    trap 'stop_bg "$run_dir/probe.pid"' EXIT
  fi
  say "teardown.yml (purging guest disks)"
  ansible-playbook "$top/playbooks/teardown.yml" -i "$inventory" -e "$(extra_vars)" \
    -e '{"mv6_teardown_purge_disks": true}' 2>&1 | tee "$run_dir/teardown.log" || rc=$?
  if [[ -f $run_dir/probe.pid ]]; then
    say "native critical service during the teardown"
    probe_stop down || rc=1
    trap - EXIT
  fi

  say "removing the simulated site"
  site_down

  say "host compared with its state before the lab"
  if [[ -f $state/lab-baseline.json ]]; then
    local result
    result=$(native_state compare lab-baseline)
    if "$venv_python" -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r.get("identical") else 1)' "$result"; then
      echo "identical (addresses, routes, rules, nftables ruleset, net.ipv4/net.ipv6 sysctls)"
    else
      "$venv_python" -c 'import json,sys; r=json.loads(sys.argv[1]); print("\n".join(r.get("differences") or [r.get("msg", "")]))' "$result"
      rc=1
    fi
  else
    echo "no baseline recorded ($state/lab-baseline.json): nothing to compare"
  fi
  if [[ -d /var/lib/mv6 ]] && [[ -n $(ls -A /var/lib/mv6 2>/dev/null) ]]; then
    echo "left in /var/lib/mv6:"
    find /var/lib/mv6 -maxdepth 2 | sed 's/^/  /'
  fi
  if [[ $rc == 0 ]]; then
    rm -rf "$state"
    say "lab is down; the host is as it was"
  else
    say "lab is down with failures; logs kept in $run_dir"
    exit 1
  fi
}

status() {
  say "namespaces"
  ip netns list | grep mv6lab || echo "none"
  say "lab links"
  ip -br link | grep -E '^(mv6lab|mv6br0|mv6p)' || echo "none"
  say "libvirt domains"
  virsh -q -c qemu:///system list --all 2>/dev/null || true
  say "processes"
  for f in "$run_dir"/*.pid; do
    [[ -f $f ]] || continue
    printf '%s %s %s\n' "$(basename "$f" .pid)" "$(cat "$f")" \
      "$(kill -0 "$(cat "$f")" 2>/dev/null && echo running || echo gone)"
  done
}

case "$cmd" in
  up) up ;;
  recheck) recheck ;;
  down) down ;;
  status) status ;;
  # The simulated site alone, without MV6 (for debugging the lab itself).
  site-up)
    mkdir -p "$run_dir"
    site_up
    ;;
  site-down) site_down ;;
  *)
    sed -n '2,19p' "$0" >&2
    exit 2
    ;;
esac
