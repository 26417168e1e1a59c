#!/usr/bin/env bash
# Start the libvirt daemons with or without systemd (PID 1 is not systemd on the build
# machines). Does nothing when they already run.
set -euo pipefail
if [[ "$(cat /proc/1/comm 2>/dev/null)" == systemd ]]; then
  systemctl enable --now virtlogd.socket libvirtd.service >/dev/null
  exit 0
fi
pgrep -x virtlogd >/dev/null || virtlogd -d
pgrep -x libvirtd >/dev/null || libvirtd -d
for _ in $(seq 50); do
  virsh -q -c qemu:///system version >/dev/null 2>&1 && exit 0
  sleep 0.2
done
echo "libvirt-up: libvirtd did not answer on qemu:///system" >&2
exit 1
