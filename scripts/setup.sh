#!/usr/bin/env bash
# One set-up path for a fresh Debian 12 machine, run as root: Debian packages, the libvirt
# daemons, a venv at .venv with the pinned Python packages of requirements-test.txt, the
# collection made visible to ansible from this checkout, and the ansible-test pip bootstrap
# stand-in.
# Running it a second time changes nothing.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

log() { printf 'setup: %s\n' "$*"; }

debian_packages=(
  # hypervisor and images
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients mmdebstrap e2fsprogs
  nftables python3-nftables iproute2
  # the guest_agent connection's helper runs on the system Python (roles/hypervisor installs it too)
  python3-libvirt
  # building libvirt-python and lxml into the venv
  libvirt-dev pkg-config gcc python3-dev python3-venv libxml2-dev libxslt1-dev
  # the fleet test site (docs/fleet.md): containers with systemd, SSH to them
  systemd-container openssh-client
  # test tools: frame injection, captures, probes
  tcpdump python3-scapy arping ndisc6 thc-ipv6 radvd iperf3 git make rsync shellcheck
  # the reference site is looked at in a headless browser (make docs, tests/docs)
  chromium
)

missing=()
for p in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "Debian packages present"
fi

"$top/scripts/libvirt-up.sh"

python=${MV6_PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
# requirements-test.txt includes requirements.txt (what the controller needs): the stamp
# hashes both, so that a change to either installs again.
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt requirements-test.txt | sha256sum | cut -d' ' -f1)
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  log "installing pinned Python packages"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-test.txt
  echo "$want" > "$stamp"
else
  log "Python packages match requirements.txt and requirements-test.txt"
fi

# The guest_agent connection's compile cache for the modules the venv's Python runs (the lab,
# the tests and the scenarios run every local task with it): scripts/venv_module_cache.py.
.venv/bin/python scripts/venv_module_cache.py

# ansible finds this checkout as mv6.transition through ansible.cfg's collections_path.
link=.collections/ansible_collections/mv6/transition
if [[ "$(readlink "$link" 2>/dev/null)" != "$top" ]]; then
  mkdir -p "$(dirname "$link")"
  ln -sfn "$top" "$link"
  log "linked $link"
fi

# ansible-test downloads get-pip.py from a host this machine cannot reach; this stand-in
# bootstraps pip with the standard library instead (see docs/testing.md).
cache="$HOME/.ansible/test/cache"
mkdir -p "$cache"
for name in get_pip_24_2.py get_pip_23_1_2.py get_pip_25_2.py; do
  if ! cmp -s tests/tools/get_pip_standin.py "$cache/$name"; then
    install -m 0644 tests/tools/get_pip_standin.py "$cache/$name"
  fi
done
log "ready"
