package sandbox

import (
	"context"

	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// runtime starts microVMs, by booting or by loading a snapshot, and takes
// over the ones a previous daemon left running: three ways to the same
// machine, so that a re-adopted sandbox travels the paths a new one does.
// The manager uses vmmRuntime; unit tests use a fake.
type runtime interface {
	// Start boots spec and returns once the microVM runs. On failure it
	// leaves no process and no socket behind.
	Start(ctx context.Context, spec vmm.VMSpec) (machine, error)
	// Restore starts a fresh VMM, loads a snapshot into it and returns
	// once the load was answered. On failure it leaves no process and no
	// socket behind.
	Restore(ctx context.Context, spec vmm.RestoreSpec) (machine, error)
	// Adopt takes over the running VMM a record describes once its
	// identity is verified (pid, start time, --id, API socket); on failure
	// it takes nothing and leaves the process alone.
	Adopt(ctx context.Context, spec vmm.AdoptSpec) (machine, error)
}

// placement is what the manager needs of the launcher to lay out a VMM's
// files: one way, in both direct and jailer mode, to prepare where a VMM's
// files live and to clean it up, and to find VMMs after a crash. Every
// vmm.Launcher implements it.
type placement interface {
	// Workspace prepares where VMM id, whose own directory is dir, finds
	// its files.
	Workspace(id, dir string, limits vmm.Limits) (vmm.Workspace, error)
	// Layout returns Workspace's paths without creating anything.
	Layout(id, dir string, limits vmm.Limits) (vmm.Workspace, error)
	// ReleaseWorkspace removes what Workspace made outside dir (a jail
	// and the cgroups of limits); idempotent, and only once no VMM of id
	// runs.
	ReleaseWorkspace(id string, limits vmm.Limits) error
	// Workspaces lists the ids that have a workspace outside their
	// directory (jails).
	Workspaces() ([]string, error)
	// FindVMMs returns the pids of the VMMs of id whose directory is dir
	// (or that run in its jail).
	FindVMMs(id, dir string) ([]int, error)
}

// machine is one running microVM.
type machine interface {
	// Pid returns the VMM's process id.
	Pid() int
	// StartTime returns the VMM process's start time
	// (vmm.ProcessStartTime), 0 when it cannot be read.
	StartTime() uint64
	// Workspace returns where the VMM's files live.
	Workspace() vmm.Workspace
	// Done is closed when the VMM process has ended.
	Done() <-chan struct{}
	// Wait waits for the process to end and releases its resources.
	Wait(ctx context.Context) (vmm.ExitStatus, error)
	// Shutdown asks the guest to stop, waits until ctx ends, then kills.
	Shutdown(ctx context.Context) (vmm.ExitStatus, error)
	// Kill kills the VMM at once and waits for it.
	Kill(ctx context.Context) (vmm.ExitStatus, error)
	// Describe asks the VMM for its instance id and state.
	Describe(ctx context.Context) (vmm.InstanceInfo, error)
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

// vmmRuntime runs Firecracker through vmm.Start, vmm.Restore and
// vmm.Adopt with a Launcher.
type vmmRuntime struct {
	launcher vmm.Launcher
}

// Start implements runtime.
func (r vmmRuntime) Start(ctx context.Context, spec vmm.VMSpec) (machine, error) {
	return wrap(vmm.Start(ctx, r.launcher, spec))
}

// Restore implements runtime.
func (r vmmRuntime) Restore(ctx context.Context, spec vmm.RestoreSpec) (machine, error) {
	return wrap(vmm.Restore(ctx, r.launcher, spec))
}

// Adopt implements runtime.
func (r vmmRuntime) Adopt(ctx context.Context, spec vmm.AdoptSpec) (machine, error) {
	return wrap(vmm.Adopt(ctx, r.launcher, spec))
}

// wrap adapts a constructor's result.
func wrap(vm *vmm.VM, err error) (machine, error) {
	if err != nil {
		return nil, err
	}
	st, _ := vmm.ProcessStartTime(vm.Process.Pid())
	return vmMachine{vm: vm, start: st}, nil
}

// vmMachine adapts *vmm.VM to machine.
type vmMachine struct {
	vm    *vmm.VM
	start uint64
}

func (m vmMachine) Pid() int                 { return m.vm.Process.Pid() }
func (m vmMachine) StartTime() uint64        { return m.start }
func (m vmMachine) Workspace() vmm.Workspace { return m.vm.Workspace() }
func (m vmMachine) Done() <-chan struct{}    { return m.vm.Process.Done() }
func (m vmMachine) Wait(ctx context.Context) (vmm.ExitStatus, error) {
	return m.vm.Wait(ctx)
}
func (m vmMachine) Shutdown(ctx context.Context) (vmm.ExitStatus, error) {
	return m.vm.Shutdown(ctx)
}
func (m vmMachine) Describe(ctx context.Context) (vmm.InstanceInfo, error) {
	return m.vm.Describe(ctx)
}
func (m vmMachine) Close() error                                     { return m.vm.Close() }
func (m vmMachine) Kill(ctx context.Context) (vmm.ExitStatus, error) { return m.vm.Kill(ctx) }
func (m vmMachine) Pause(ctx context.Context) error                  { return m.vm.Pause(ctx) }
func (m vmMachine) Resume(ctx context.Context) error                 { return m.vm.Resume(ctx) }
func (m vmMachine) CreateSnapshot(ctx context.Context, s vmm.SnapshotSpec) error {
	return m.vm.CreateSnapshot(ctx, s)
}
