// Command jailer-emulator is a drop-in "jailer" for hosts without KVM: it
// takes Firecracker v1.16.1's jailer command line, really builds the
// chroot, cgroups and namespaces as root, and execs the Firecracker
// emulator inside. See package internal/jailemu for what is and is not
// reproduced.
package main

import (
	"os"

	"github.com/firecracker-vmm/firecracker-vmm/internal/jailemu"
)

func main() {
	os.Exit(jailemu.Main(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}
