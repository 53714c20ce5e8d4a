package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// baseline starts and configures Firecracker processes directly, with no
// daemon.
type baseline struct {
	o        Options
	launcher *vmm.DirectLauncher
	vms      []*vmm.VM
}

func newBaseline(o Options) *baseline {
	o.logf("baseline: %d direct starts, concurrency %d", o.N, o.Concurrency)
	return &baseline{o: o, launcher: &vmm.DirectLauncher{Config: vmm.Config{Binary: o.Firecracker, LogLevel: "Warning", Env: o.Env}},
		vms: make([]*vmm.VM, o.N)}
}

func (b *baseline) name() string { return "baseline" }

func (b *baseline) create(ctx context.Context, i int) error {
	o := b.o
	dir := filepath.Join(o.Dir, "baseline", fmt.Sprintf("vm%04d", i))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	vm, err := vmm.Start(ctx, b.launcher, vmm.VMSpec{
		ID: fmt.Sprintf("bench-%d", i), Dir: dir, VCPUs: o.VCPUs, MemoryMiB: o.MemoryMiB,
		Kernel: o.kernel(), BootArgs: bootArgs,
		Drives:  []vmm.DriveSpec{{ID: "rootfs", Path: o.rootfs(), Root: true}},
		Logging: vmm.LoggingSpec{LogPath: filepath.Join(dir, "firecracker.log"), MetricsPath: filepath.Join(dir, "firecracker.metrics")},
		// The daemon gives every sandbox a vsock device: so does the
		// baseline, so that both make the same API calls.
		Vsock: &vmm.VsockSpec{CID: 3, UDSPath: "vsock.sock"},
	})
	b.vms[i] = vm // each index is written by one worker only
	return err
}

// close kills every microVM the baseline started.
func (b *baseline) close(ctx context.Context) {
	for _, vm := range b.vms {
		if vm != nil {
			_, _ = vm.Kill(context.WithoutCancel(ctx))
			_ = vm.Close()
		}
	}
}
