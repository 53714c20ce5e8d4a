package vmm

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// ErrIdentityMismatch is returned (wrapped) by Adopt when the process
// found is not the recorded VMM: its pid was reused, its command line
// lacks "--id <id>", or its API socket answers for another instance.
var ErrIdentityMismatch = errors.New("vmm: the process is not the recorded VMM")

// AdoptSpec describes a running VMM that a previous daemon started, as its
// durable record knows it. Paths are host paths.
type AdoptSpec struct {
	// ID is the instance id. Required.
	ID string
	// PID is the VMM's process id. Required.
	PID int
	// PIDStartTime is the process's start time (ProcessStartTime) when it
	// was recorded. Required (non-zero).
	PIDStartTime uint64
	// Dir is the VMM's own directory (LaunchRequest.Dir). Required.
	Dir string
	// APISocket is the API socket; empty means the launcher's default
	// (Dir/firecracker.sock, or the jail's /run/firecracker.socket).
	APISocket string
	// ConsolePath is the console file; empty means Dir/console.log.
	ConsolePath string
	// LogPath, MetricsPath and VsockPath are the log file, the metrics
	// file and the vsock host socket, if the VMM has them.
	LogPath, MetricsPath, VsockPath string
	// TrackDirtyPages tells whether the VM tracks dirty pages (started or
	// restored with it), which Diff snapshots need.
	TrackDirtyPages bool
	// Limits are the limits the VMM was launched with; under the jailer
	// they name the cgroups removed after it ended. Optional.
	Limits *Limits
}

// Validate returns every problem of the spec, joined, or nil.
func (s AdoptSpec) Validate() error {
	var errs []error
	if err := ValidateInstanceID(s.ID); err != nil {
		errs = append(errs, err)
	}
	if s.PID <= 0 {
		errs = append(errs, fmt.Errorf("pid %d: must be > 0", s.PID))
	}
	if s.PIDStartTime == 0 {
		errs = append(errs, errors.New("pid start time: required"))
	}
	if s.Dir == "" {
		errs = append(errs, errors.New("dir: required"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid adopt spec: %w", err)
	}
	return nil
}

// AdoptRequest is what Launcher.Adopt is given: a running process that
// Adopt verified as VMM ID. Paths are host paths.
type AdoptRequest struct {
	// ID is the instance id.
	ID string
	// Dir is the VMM's own directory.
	Dir string
	// APISocket is the recorded API socket; empty means the launcher's
	// default.
	APISocket string
	// Limits are the VMM's launch limits (nil: none).
	Limits *Limits
	// Process is the handle on the verified process.
	Process *Process
}

// Adopt takes over a running VMM that a previous daemon started and
// returns it as Start and Restore return theirs: with the launcher's path
// mapper, jail and cleanup, its client, its paths and its dirty page
// tracking. Before anything is taken the VMM's identity is verified: the
// pid is alive with the recorded start time and its command line carries
// "--id <ID>"; a pidfd is then taken and the start time checked again
// (a pid recycled meanwhile is caught); finally its API socket must answer
// GET / with ID. All of it is bounded by ctx.
//
// On failure Adopt releases what it took (pidfd, client) and leaves the
// process alone (it is never killed); the error names the failed check and
// wraps ErrIdentityMismatch for a process that is not the VMM, or
// errdefs.ErrNotFound for one that is gone.
func Adopt(ctx context.Context, launcher Launcher, spec AdoptSpec) (*VM, error) {
	fail := func(err error) (*VM, error) {
		return nil, fmt.Errorf("vmm: adopt %s (pid %d): %w", spec.ID, spec.PID, err)
	}
	if err := spec.Validate(); err != nil {
		return fail(err)
	}
	if spec.ConsolePath == "" {
		spec.ConsolePath = filepath.Join(spec.Dir, DefaultConsoleName)
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	proc, err := attachVerified(spec.PID, spec.PIDStartTime, spec.ID)
	if err != nil {
		return fail(err)
	}
	l, err := launcher.Adopt(ctx, AdoptRequest{
		ID: spec.ID, Dir: spec.Dir, APISocket: spec.APISocket, Limits: spec.Limits, Process: proc,
	})
	if err != nil {
		_ = proc.Close()
		return fail(err)
	}
	vm := newVM(spec.ID, l, spec.Dir, spec.ConsolePath, spec.LogPath, spec.MetricsPath)
	vm.VsockPath = spec.VsockPath
	vm.trackDirtyPages = spec.TrackDirtyPages
	info, err := vm.Client.DescribeInstance(ctx)
	if err == nil && info.ID != spec.ID {
		err = fmt.Errorf("it answers for instance %q: %w", info.ID, ErrIdentityMismatch)
	}
	if err != nil {
		vm.Client.Close()
		_ = proc.Close()
		return fail(fmt.Errorf("API socket %s: %w", vm.SocketPath, err))
	}
	return vm, nil
}

// attachVerified returns a pidfd handle on pid once it is known to be VMM
// id started at startTime: the start time and the command line are
// checked, the pidfd taken and the start time checked again, so that the
// handle never pins a process that merely reuses the pid.
func attachVerified(pid int, startTime uint64, id string) (*Process, error) {
	checkStart := func(when string) error {
		got, err := ProcessStartTime(pid)
		if err != nil {
			return fmt.Errorf("%s: %w", when, err)
		}
		if got != startTime {
			return fmt.Errorf("%s: pid %d was reused (start time %d, recorded %d): %w",
				when, pid, got, startTime, ErrIdentityMismatch)
		}
		return nil
	}
	if err := checkStart("start time"); err != nil {
		return nil, err
	}
	if !HasInstanceID(pid, id) {
		return nil, fmt.Errorf("command line: pid %d does not carry --id %s: %w", pid, id, ErrIdentityMismatch)
	}
	proc, err := Attach(pid)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			err = fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("pidfd: %w", err)
	}
	if err := checkStart("start time after taking a pidfd"); err != nil {
		_ = proc.Close()
		return nil, err
	}
	return proc, nil
}
