// Command firecracker-emulator is a drop-in "firecracker" for hosts without
// KVM: it speaks Firecracker v1.16.1's command line and HTTP API strictly.
// See package internal/fcemu for what is and is not reproduced.
package main

import (
	"os"

	"github.com/firecracker-vmm/firecracker-vmm/internal/fcemu"
)

func main() {
	os.Exit(fcemu.Main(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}
