#!/usr/bin/env bash
# Starts vmm-daemon in the foreground for trying the quick start (make run).
#
# It builds the binaries, lays out a data dir under .dev/ (or $VMM_DEV_DIR),
# writes a config and starts the daemon. On a host with a usable /dev/kvm and
# a `firecracker` binary on PATH (or FC_BINARY set) plus FC_KERNEL and
# FC_ROOTFS, it runs real microVMs; anywhere else it runs the Firecracker
# emulator and says so. Stop it with Ctrl-C: sandboxes are stopped cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PATH="/usr/local/go/bin:$PATH"

make -s build

dev=${VMM_DEV_DIR:-$root/.dev}
data=$dev/data
mkdir -p "$data/kernels" "$data/images"

if [ "$(id -u)" = 0 ]; then
  sock=${VMM_SOCKET:-/run/firecracker-vmm/vmm.sock}
else
  sock=${VMM_SOCKET:-$dev/vmm.sock}
fi

network=false
[ "${VMM_DEV_NETWORK:-0}" = 1 ] && network=true

fc=${FC_BINARY:-$(command -v firecracker || true)}
if [ -n "$fc" ] && [ -r /dev/kvm ] && [ -w /dev/kvm ] && [ -n "${FC_KERNEL:-}" ] && [ -n "${FC_ROOTFS:-}" ]; then
  mode="Firecracker ($fc)"
  binary=$fc
  ln -sf "$(readlink -f "$FC_KERNEL")" "$data/kernels/vmlinux"
  ln -sf "$(readlink -f "$FC_ROOTFS")" "$data/images/rootfs.ext4"
else
  mode="the Firecracker EMULATOR (bin/firecracker-emulator): no usable Firecracker + KVM + FC_KERNEL/FC_ROOTFS here, so sandboxes are emulated"
  binary=$root/bin/firecracker-emulator
  # Placeholders: the emulator opens these files but boots nothing from them.
  [ -e "$data/kernels/vmlinux" ] || printf 'emulated kernel image\n' > "$data/kernels/vmlinux"
  if [ ! -e "$data/images/rootfs.ext4" ]; then
    truncate -s 256M "$data/images/rootfs.ext4"
    command -v mkfs.ext4 >/dev/null && mkfs.ext4 -q -F "$data/images/rootfs.ext4" || true
  fi
fi

cat > "$dev/config.toml" <<TOML
# Written by scripts/dev-daemon.sh; see docs/config.example.toml for every key.
[firecracker]
binary   = "$binary"
data_dir = "$data"
log_level = "Info"

[grpc]
unix_socket = "$sock"

[network]
# Each sandbox gets its own namespace, TAP and address on a host bridge,
# which changes the host (bridge, ip_forward, nftables). Off unless
# VMM_DEV_NETWORK=1.
enabled = $network

[daemon]
# Ctrl-C stops and removes every sandbox (the production default, "leave",
# keeps them running across a daemon restart).
on_shutdown = "stop"

[defaults]
# vcpus, memory_mib and boot_args keep the daemon's defaults.
kernel = "$data/kernels/vmlinux"
rootfs = "$data/images/rootfs.ext4"
TOML

cat >&2 <<MSG
==> vmm-daemon runs $mode
==> socket: $sock   data: $data   config: $dev/config.toml
==> in another shell:
      export PATH=$root/bin:\$PATH$( [ "$sock" = /run/firecracker-vmm/vmm.sock ] || printf '\n      export VMM_SOCKET=%s' "$sock")
      vmm create --vcpus 2 --memory 1024 --wait
      vmm list
MSG
exec "$root/bin/vmm-daemon" --config "$dev/config.toml"
