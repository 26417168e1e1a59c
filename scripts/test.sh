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
#   MV6_TEST_FLEET=0 bash scripts/test.sh    every tier but the fleet
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
    | grep -a -E '^(FAILED|ERROR) |^E  |^fatal: |^failed: |FAILED! =>' | cut -c1-600 | head -n 80 || true
}

stop_fleet() { # the fleet's run is still going: stop it and take the fleet down
  [[ -n $fleet_pid ]] || return 0
  if kill -0 "$fleet_pid" 2>/dev/null; then
    stamp "stopping the fleet scenario (the other tiers failed or were interrupted)"
    # Its whole session: timeout(1) puts molecule in a process group of its own. The
    # containers and probes are in sessions of their own too; fleet.sh down removes them.
    pkill -TERM -s "$fleet_pid" 2>/dev/null || true
    for _ in $(seq 60); do pgrep -s "$fleet_pid" >/dev/null || break; sleep 1; done
    pkill -KILL -s "$fleet_pid" 2>/dev/null || true
    timeout 300 bash scripts/fleet.sh down >>"$fleet_log" 2>&1 || true
  fi
  fleet_pid=""
}
trap stop_fleet EXIT
trap 'exit 130' INT TERM

if [[ ${MV6_TEST_FLEET:-1} == 1 ]]; then
  stamp "fleet scenario started beside the other tiers; its log: $fleet_log"
  # A session of its own, so that it can be stopped as a whole (stop_fleet). Niced, with
  # everything it starts (its containers, their libvirtd and guests inherit it), so that the
  # fleet's many TCG and Ansible threads yield the cores to the other tiers. Measured once, it
  # did not make the integration tier faster (docs/testing.md, "The whole run").
  # shellcheck disable=SC2016 # $1 and $2 expand in the inner shell
  MV6_FLEET_SHARED_MACHINE=1 nice -n "${MV6_TEST_FLEET_NICE:-10}" setsid bash -c \
    'make molecule SCENARIOS=fleet >"$1" 2>&1; echo $? >"$2"' _ "$fleet_log" "$logs/fleet.rc" &
  fleet_pid=$!
fi

rc=0
for tier in lint unit sanity integration molecule; do
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

if ((rc != 0)); then
  stop_fleet
  [[ -f $fleet_log ]] && { stamp "the fleet's log, last lines"; tail -n 60 "$fleet_log"; }
  failures "$failed_log" "make $tier"
  exit 1
fi

if [[ -n $fleet_pid ]]; then
  stamp "waiting for the fleet scenario"
  wait "$fleet_pid"
  fleet_pid=""
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
