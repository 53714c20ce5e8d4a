package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/firecracker-vmm/firecracker-vmm/internal/bench"
)

// recoverMain runs "vmm-bench recover [flags]": the time a restarted
// daemon takes to serve with N sandboxes left running, against one with
// none. It returns the exit code.
func recoverMain(args []string) int {
	self, _ := os.Executable()
	binDir := filepath.Dir(self)
	fs := flag.NewFlagSet("vmm-bench recover", flag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: vmm-bench recover [flags]\n\n"+
			"Creates -n sandboxes, shuts the daemon down leaving them running (on_shutdown = \"leave\"),\n"+
			"restarts it and measures the time from its process start to its first successful List,\n"+
			"against the same restart with no sandbox. Every VMM is removed at the end.")
		fs.PrintDefaults()
	}
	o := bench.Options{Log: os.Stderr}
	var rounds, bootDelay int
	fs.StringVar(&o.Daemon, "daemon", filepath.Join(binDir, "vmm-daemon"), "vmm-daemon binary")
	fs.StringVar(&o.Firecracker, "firecracker", filepath.Join(binDir, "firecracker-emulator"), "firecracker binary (or the emulator)")
	fs.IntVar(&o.N, "n", 100, "sandboxes left running across each restart")
	fs.IntVar(&rounds, "rounds", 3, "restarts measured, with and without the sandboxes")
	fs.IntVar(&o.Concurrency, "concurrency", 10, "creates (and removes) in flight at once")
	fs.IntVar(&o.VCPUs, "vcpus", 1, "vCPUs per microVM")
	fs.IntVar(&o.MemoryMiB, "memory", 128, "memory per microVM (MiB)")
	fs.IntVar(&o.RootfsMiB, "rootfs", 8, "rootfs image size (MiB, sparse)")
	fs.IntVar(&bootDelay, "boot-delay-ms", 0, "emulated guest boot time (FCEMU_BOOT_DELAY_MS)")
	_ = fs.Parse(args)
	if bootDelay > 0 {
		o.Env = append(o.Env, fmt.Sprintf("FCEMU_BOOT_DELAY_MS=%d", bootDelay))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := bench.RunRecover(ctx, o, rounds)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmm-bench recover:", err)
		return 1
	}
	fmt.Printf("restart→first successful List, %d sandboxes left running, %d rounds\n", o.N, rounds)
	r.Fprint(os.Stdout)
	return 0
}
