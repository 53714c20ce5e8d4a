package sandbox

import (
	"context"

	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// runtime starts microVMs, by booting or by loading a snapshot. The
// manager uses vmmRuntime; unit tests use a fake.
type runtime interface {
	// Start boots spec and returns once the microVM runs. On failure it
	// leaves no process and no socket behind.
	Start(ctx context.Context, spec vmm.VMSpec) (machine, error)
	// Restore starts a fresh VMM, loads a snapshot into it and returns
	// once the load was answered. On failure it leaves no process and no
	// socket behind.
	Restore(ctx context.Context, spec vmm.RestoreSpec) (machine, error)
}

// machine is one running microVM.
type machine interface {
	// Pid returns the VMM's process id.
	Pid() int
	// Done is closed when the VMM process has ended.
	Done() <-chan struct{}
	// Wait waits for the process to end and releases its resources.
	Wait(ctx context.Context) (vmm.ExitStatus, error)
	// Shutdown asks the guest to stop, waits until ctx ends, then kills.
	Shutdown(ctx context.Context) (vmm.ExitStatus, error)
	// Kill kills the VMM at once and waits for it.
	Kill(ctx context.Context) (vmm.ExitStatus, error)
	// Pause pauses the microVM (idempotent).
	Pause(ctx context.Context) error
	// Resume resumes the microVM (idempotent).
	Resume(ctx context.Context) error
	// CreateSnapshot writes a snapshot of the paused microVM; the paths
	// in s are host paths.
	CreateSnapshot(ctx context.Context, s vmm.SnapshotSpec) error
	// Close releases the handle (connections, pidfd) and leaves the VMM
	// running.
	Close() error
}

// vmmRuntime starts Firecracker through vmm.Start / vmm.Restore and a
// Launcher.
type vmmRuntime struct {
	launcher vmm.Launcher
}

// Start implements runtime.
func (r vmmRuntime) Start(ctx context.Context, spec vmm.VMSpec) (machine, error) {
	vm, err := vmm.Start(ctx, r.launcher, spec)
	if err != nil {
		return nil, err
	}
	return vmMachine{vm}, nil
}

// Restore implements runtime.
func (r vmmRuntime) Restore(ctx context.Context, spec vmm.RestoreSpec) (machine, error) {
	vm, err := vmm.Restore(ctx, r.launcher, spec)
	if err != nil {
		return nil, err
	}
	return vmMachine{vm}, nil
}

// vmMachine adapts *vmm.VM to machine.
type vmMachine struct{ vm *vmm.VM }

func (m vmMachine) Pid() int              { return m.vm.Process.Pid() }
func (m vmMachine) Done() <-chan struct{} { return m.vm.Process.Done() }
func (m vmMachine) Wait(ctx context.Context) (vmm.ExitStatus, error) {
	return m.vm.Wait(ctx)
}
func (m vmMachine) Shutdown(ctx context.Context) (vmm.ExitStatus, error) {
	return m.vm.Shutdown(ctx)
}
func (m vmMachine) Close() error                                     { return m.vm.Close() }
func (m vmMachine) Kill(ctx context.Context) (vmm.ExitStatus, error) { return m.vm.Kill(ctx) }
func (m vmMachine) Pause(ctx context.Context) error                  { return m.vm.Pause(ctx) }
func (m vmMachine) Resume(ctx context.Context) error                 { return m.vm.Resume(ctx) }
func (m vmMachine) CreateSnapshot(ctx context.Context, s vmm.SnapshotSpec) error {
	return m.vm.CreateSnapshot(ctx, s)
}
