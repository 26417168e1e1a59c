#!/usr/bin/env bash
# The pictures of the plans of the example inventories, as docs/diagram.md shows them:
#
#   bash scripts/plan_pictures.sh [DIR]      (default DIR: docs/pictures)
#
# Each is drawn by playbooks/plan_picture.yml without contacting any host and without reading
# or writing the inventory's own plan (a fresh plan in a temporary directory), so the same
# checkout draws the same bytes; tests/integration/test_plan_pictures.py checks that the
# pictures in docs/ are the ones the code draws today.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-docs/pictures}")
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export ANSIBLE_CONFIG=$PWD/ansible.cfg PATH=$PWD/.venv/bin:$PATH
for inv in lab lab_v4 fleet fleet_v4 fleet_shared; do
  ansible-playbook -i "inventories/$inv" playbooks/plan_picture.yml \
    -e mv6_picture_gather=false -e "mv6_plan_file=$work/$inv/mv6_plan.yml" \
    -e "mv6_picture_file=$out/$inv.svg" >"$work/$inv.log" 2>&1 \
    || { cat "$work/$inv.log" >&2; echo "plan_pictures: $inv failed" >&2; exit 1; }
  echo "plan_pictures: $out/$inv.svg"
done
