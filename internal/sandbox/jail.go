package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// Jailer is what the manager needs of a launcher that jails each VMM
// (*vmm.JailerLauncher). When Config.Launcher implements it, every sandbox
// keeps its disk, snapshot files and sockets inside its jail's chroot.
type Jailer interface {
	// Jail returns the jail of id and the cgroups of limits.
	Jail(id string, limits vmm.Limits) (vmm.Jail, error)
	// Prepare creates the (empty) chroot of id, owned by the jail's user.
	Prepare(id string) (vmm.Jail, error)
	// Cleanup removes the jail of id and the cgroups of limits; it is
	// idempotent and must only run once no VMM of id is left.
	Cleanup(id string, limits vmm.Limits) error
	// JailsDir returns the directory holding one jail directory per id
	// (<chroot_base>/<exec name>).
	JailsDir() (string, error)
	// Processes returns the pids of the processes in the jail's cgroups.
	Processes(id string) ([]int, error)
}

var _ Jailer = (*vmm.JailerLauncher)(nil)

// Names inside a jail's root of the files a checkpoint writes (as
// Firecracker sees them: /snapshot.vmstate, /snapshot.mem) and of a
// restored sandbox's snapshot files.
const (
	jailStateName = SnapshotStateName
	jailMemName   = SnapshotMemName
)

// prepareJail creates the chroot of a new sandbox and fills in the
// process record for it: sockets, log and metrics inside the chroot.
func (m *Manager) prepareJail(id string, limits vmm.Limits, proc *Process) (vmm.Jail, error) {
	if _, err := m.jailer.Prepare(id); err != nil {
		return vmm.Jail{}, err
	}
	j, err := m.jailer.Jail(id, limits)
	if err != nil {
		return vmm.Jail{}, err
	}
	proc.Jailed = true
	proc.Chroot = j.Root
	proc.UID, proc.GID = j.UID, j.GID
	proc.Cgroup = j.Cgroup
	proc.APISocket = j.HostPath(vmm.JailAPISocket)
	proc.LogPath = j.HostPath(vmm.JailLogPath)
	proc.MetricsPath = j.HostPath(vmm.JailMetricsPath)
	if proc.VsockPath != "" {
		proc.VsockPath = j.HostPath(VsockName)
	}
	return j, nil
}

// releaseJail removes a sandbox's jail and cgroups (idempotent); it runs
// once no VMM of the sandbox is left. Without a jailer it does nothing.
func (m *Manager) releaseJail(id string, limits vmm.Limits) error {
	if m.jailer == nil {
		return nil
	}
	return m.jailer.Cleanup(id, limits)
}

// ownByJail gives a file in the jail to the jail's user, mode 0600.
func ownByJail(j vmm.Jail, path string) error {
	if err := os.Lchown(path, j.UID, j.GID); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}

// moveOut moves a file Firecracker wrote inside a jail to dst (rename;
// copy and remove across file systems) and gives it to the daemon's user.
func (m *Manager) moveOut(ctx context.Context, src, dst string) error {
	if err := os.Rename(src, dst); err != nil {
		if !errors.Is(err, syscall.EXDEV) {
			return fmt.Errorf("moving %s out of the jail: %w", src, err)
		}
		if err := m.cloneDisk(ctx, src, dst); err != nil {
			return fmt.Errorf("copying %s out of the jail: %w", src, err)
		}
		if err := os.Remove(src); err != nil {
			return fmt.Errorf("moving %s out of the jail: %w", src, err)
		}
	}
	if err := os.Lchown(dst, os.Getuid(), os.Getgid()); err != nil {
		return fmt.Errorf("moving %s out of the jail: %w", src, err)
	}
	return nil
}

// removeIfExists removes a file; a missing file is fine.
func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
