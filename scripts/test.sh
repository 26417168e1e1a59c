#!/usr/bin/env bash
# make test: every tier, in one bounded run (.ci/run calls it).
#
# The fleet scenario (molecule/fleet) runs beside the other tiers, not after them. Its hosts
# are containers with their own network namespaces, libvirt daemons and guests, and its
# controller side is in a namespace of its own (scripts/fleet.sh), so the other tiers see
# nothing of it on this machine; most of a fleet run is one host's Ansible tasks waiting on
# another, which leaves a core free. Run one after the other, the tiers would exceed the CI
# budget (docs/testing.md, "The whole run").
#
# Sanity, the docs site and the files_only integration tests run beside the Molecule
# scenarios, after the integration tests of the host (start_beside below).
#
#   MV6_TEST_FLEET=0 bash scripts/test.sh    every tier but the fleet
#   MV6_TEST_BESIDE=0 bash scripts/test.sh   sanity, docs and integration-files in front, in turn
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
top=$(pwd)
logs=$top/build/test-logs
mkdir -p "$logs"
fleet_log=$logs/fleet.log
rm -f "$logs/fleet.rc"
fleet_pid=""

stamp() { printf '=== %s %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# CI keeps only the end of what a run prints: a failed tier ends with the lines that name its
# failed tests and their assertions, picked from its log. Molecule colours its output and
# draws a box rule ("  │ ") before every line of a step: both go before the match.
failures() { # LOG TITLE
  stamp "$2: the failed tests and their errors"
  sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^ *│ //' "$1" \
    | grep -a -E '^(FAILED|ERROR) |^ERROR: |^E  |^fatal: |^failed: |FAILED! =>' | cut -c1-600 | head -n 80 || true
}

stop_session() { # SID SECONDS: SIGTERM to every process of the session, SIGKILL after SECONDS
  pkill -TERM -s "$1" 2>/dev/null || true
  for _ in $(seq "$2"); do pgrep -s "$1" >/dev/null || break; sleep 1; done
  pkill -KILL -s "$1" 2>/dev/null || true
}

stop_fleet() { # the fleet's run is still going: stop it and take the fleet down
  [[ -n $fleet_pid ]] || return 0
  if kill -0 "$fleet_pid" 2>/dev/null; then
    stamp "stopping the fleet scenario (the other tiers failed or were interrupted)"
    # Its whole session: timeout(1) puts molecule in a process group of its own. The
    # containers and probes are in sessions of their own too; fleet.sh down removes them.
    stop_session "$fleet_pid" 60
    timeout 300 bash scripts/fleet.sh down >>"$fleet_log" 2>&1 || true
  fi
  fleet_pid=""
  remove_fleet_cgroup
}
# The tiers that touch nothing of the host's network, libvirt or /dev/kvm (sanity, the docs
# site, the files_only integration tests: about 8 min) run beside the Molecule scenarios,
# which keep about one core busy of the two; before, they ran one after the other in front.
side_tiers=(sanity docs integration-files)
side_pid=""
if [[ ${MV6_TEST_BESIDE:-1} == 1 ]]; then
  fg_tiers=(lint unit integration-host molecule)
else
  fg_tiers=(lint unit sanity docs integration-host integration-files molecule)
fi
rm -f "$logs/beside.failed"

start_beside() {
  stamp "${side_tiers[*]} started beside the scenarios; their logs: $logs/TIER.log"
  # A session of its own (stop_beside), at a lower autogroup weight than the scenarios'.
  # shellcheck disable=SC2016 # $1 and $@ expand in the inner shell
  setsid bash -c 'echo "${MV6_TEST_BESIDE_NICE:-5}" >/proc/self/autogroup 2>/dev/null || true
     logs=$1; shift
     for tier in "$@"; do
       start=$SECONDS
       if make "$tier" >"$logs/$tier.log" 2>&1; then
         printf "=== %s make %s passed in %s s (beside)\n" "$(date -u +%H:%M:%S)" "$tier" $((SECONDS - start))
       else
         printf "=== %s make %s FAILED after %s s (beside)\n" "$(date -u +%H:%M:%S)" "$tier" $((SECONDS - start))
         echo "$tier" >"$logs/beside.failed"
         exit 1
       fi
     done' _ "$logs" "${side_tiers[@]}" &
  side_pid=$!
}

stop_beside() {
  [[ -n $side_pid ]] || return 0
  if kill -0 "$side_pid" 2>/dev/null; then
    stamp "stopping ${side_tiers[*]} (the other tiers failed or were interrupted)"
    stop_session "$side_pid" 30
  fi
  side_pid=""
}
trap 'stop_beside; stop_fleet' EXIT
trap 'exit 130' INT TERM

# The fleet's share of the CPU. nice(1) alone does not give one: with the kernel's autogroup
# scheduling (sched_autogroup_enabled=1 here), every session is scheduled as one entity at the
# same weight, and a nice value only counts among its own session's processes. The fleet is
# many sessions (setsid below, and inside each container every systemd service, SSH login and
# QEMU), so it took most of both cores whatever its nice value, and the integration tier ran
# three times slower beside it than alone. A CPU cgroup of its own makes the whole fleet one
# entity of weight MV6_TEST_FLEET_SHARES (1024 is an equal share) against the other tiers; it
# still takes all the CPU they leave idle. The fleet is not on the run's critical path: alone it
# takes about 30 min, the other tiers about 66 in all (3 Dec 17:51 run). So the
# fleet gets half an equal share by default (MV6_TEST_FLEET_SHARES=512; 0 for no cgroup, only
# nice): when both want the CPU the foreground tiers get most of it, and the fleet still ends
# first. Measured at 256 (3 Dec 07:04, with other runs of mine on the machine): the fleet
# 3,455 s, the integration tier 2,541 s; the integration tier alone took 2,782 s that
# afternoon (with the agent tests added since) and over 3,000 s in CI beside an uncapped
# fleet. docs/testing.md, "The whole run".
fleet_cgroup=""
fleet_cpu_share() { # prints the cgroup's procs file, or nothing
  local shares=${MV6_TEST_FLEET_SHARES:-512} dir
  [[ $shares != 0 ]] || return 0
  if [[ -d /sys/fs/cgroup/cpu && -f /sys/fs/cgroup/cpu/cpu.shares ]]; then # cgroup v1
    dir=/sys/fs/cgroup/cpu/mv6-test-fleet
    mkdir -p "$dir" 2>/dev/null && echo "$shares" >"$dir/cpu.shares" 2>/dev/null || return 0
  elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then # cgroup v2
    dir=/sys/fs/cgroup/mv6-test-fleet
    grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null \
      || echo +cpu >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || return 0
    mkdir -p "$dir" 2>/dev/null && echo $((shares * 100 / 1024)) >"$dir/cpu.weight" 2>/dev/null \
      || return 0
  else
    return 0
  fi
  echo "$dir/cgroup.procs"
}
remove_fleet_cgroup() { # once the fleet has stopped; a cgroup with tasks left is kept
  [[ -n $fleet_cgroup ]] || return 0
  rmdir "$fleet_cgroup" 2>/dev/null || stamp "kept $fleet_cgroup: tasks are still in it"
  fleet_cgroup=""
}

if [[ ${MV6_TEST_FLEET:-1} == 1 ]]; then
  stamp "fleet scenario started beside the other tiers; its log: $fleet_log"
  procs=$(fleet_cpu_share)
  [[ -n $procs ]] && fleet_cgroup=${procs%/cgroup.procs}
  stamp "the fleet's CPU: ${fleet_cgroup:-no cgroup (nice and autogroup nice only)}"
  # A session of its own, so that it can be stopped as a whole (stop_fleet); in its CPU
  # cgroup before it starts anything, so that everything it starts (the containers, their
  # libvirtd and guests) is in it too.
  # shellcheck disable=SC2016 # $1 to $3 expand in the inner shell
  MV6_FLEET_SHARED_MACHINE=1 nice -n "${MV6_TEST_FLEET_NICE:-10}" setsid bash -c \
    'if [[ -n $3 ]]; then echo $$ >"$3"; fi
     echo "${MV6_TEST_FLEET_NICE:-10}" >/proc/self/autogroup 2>/dev/null || true
     make molecule SCENARIOS=fleet >"$1" 2>&1; echo $? >"$2"' _ "$fleet_log" "$logs/fleet.rc" "$procs" &
  fleet_pid=$!
fi


rc=0
for tier in "${fg_tiers[@]}"; do
  if [[ $tier == molecule && ${MV6_TEST_BESIDE:-1} == 1 ]]; then
    start_beside
  fi
  stamp "make $tier"
  start=$SECONDS
  if ! make "$tier" 2>&1 | tee "$logs/$tier.log"; then
    stamp "make $tier FAILED after $((SECONDS - start)) s"
    rc=1
    failed_log=$logs/$tier.log
    break
  fi
  stamp "make $tier passed in $((SECONDS - start)) s"
done

beside_failure="" # the log of a tier beside the scenarios that failed
if ((rc == 0)) && [[ -n $side_pid ]]; then
  stamp "waiting for ${side_tiers[*]}"
  wait "$side_pid"
  side_rc=$?
  side_pid=""
  if [[ -f $logs/beside.failed ]]; then
    tier=$(cat "$logs/beside.failed")
    rc=1
    failed_log=$logs/$tier.log
    beside_failure=$failed_log
  elif ((side_rc != 0)); then # it ended without saying which tier (killed, say)
    tier="${side_tiers[*]}"
    stamp "the tiers beside the scenarios ended with rc $side_rc and no failed tier named"
    rc=1
    failed_log=/dev/null
  else
    stamp "${side_tiers[*]} passed"
  fi
fi

if ((rc != 0)); then
  stop_beside
  stop_fleet
  [[ -f $fleet_log ]] && { stamp "the fleet's log, last lines"; tail -n 60 "$fleet_log"; }
  # A tier beside the scenarios that failed before a foreground tier did is named too.
  if [[ -z $beside_failure && -f $logs/beside.failed ]]; then
    beside_failure=$logs/$(cat "$logs/beside.failed").log
    stamp "also FAILED beside the scenarios: $(cat "$logs/beside.failed") ($beside_failure)"
  fi
  # CI keeps only the end of the output: the failed tier's own lines come last.
  if [[ -n $beside_failure ]]; then
    stamp "$beside_failure (beside the scenarios), last 60 lines:"
    tail -n 60 "$beside_failure"
  fi
  failures "$failed_log" "make $tier"
  exit 1
fi

if [[ -n $fleet_pid ]]; then
  stamp "waiting for the fleet scenario"
  wait "$fleet_pid"
  fleet_pid=""
  remove_fleet_cgroup
  fleet_rc=$(cat "$logs/fleet.rc" 2>/dev/null || echo 1)
  grep -a '^=== molecule scenario' "$fleet_log" || true
  if [[ $fleet_rc != 0 ]]; then
    stamp "the fleet scenario FAILED (rc $fleet_rc); the last 400 lines of $fleet_log:"
    tail -n 400 "$fleet_log"
    failures "$fleet_log" "the fleet scenario"
    exit 1
  fi
  stamp "fleet scenario passed"
fi
stamp "every tier passed"
