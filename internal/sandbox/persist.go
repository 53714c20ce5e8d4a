package sandbox

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/store"
)

// Store is the durable state the manager writes every record change
// through before the call that made it returns. It is implemented by
// *store.Store.
type Store interface {
	// PutSandbox creates or replaces a sandbox record.
	PutSandbox(ctx context.Context, rec store.SandboxRecord) error
	// DeleteSandbox deletes a sandbox record.
	DeleteSandbox(ctx context.Context, id string) error
	// ListSandboxes returns every sandbox record.
	ListSandboxes(ctx context.Context) ([]store.SandboxRecord, error)
	// CreateSandbox writes a new sandbox's record.
	CreateSandbox(ctx context.Context, rec store.SandboxRecord) error
}

// storeTimeout bounds one store write made on behalf of a state change.
const storeTimeout = 10 * time.Second

// recordOf converts inst's record into its persisted form. inst.mu must be
// held.
func recordOf(inst *instance) store.SandboxRecord {
	s := inst.rec
	return store.SandboxRecord{
		ID:     s.ID,
		Labels: maps.Clone(s.Labels),
		State:  string(s.State),
		Hardware: store.HardwareRecord{
			VCPUs: s.Hardware.VCPUs, MemoryMiB: s.Hardware.MemoryMiB,
			Kernel: s.Hardware.Kernel, Initrd: s.Hardware.Initrd, Rootfs: s.Hardware.Rootfs,
			Disk: s.Hardware.Disk, BootArgs: s.Hardware.BootArgs, TrackDirtyPages: s.Hardware.TrackDirtyPages,
		},
		Network: store.NetworkRecord{
			TAP: s.Network.TAP, MAC: s.Network.MAC, IP: s.Network.IP, Gateway: s.Network.Gateway,
			DNS: slices.Clone(s.Network.DNS), Netns: s.Network.Netns, GuestIP: s.Network.GuestIP,
			PrefixLen: s.Network.PrefixLen,
		},
		Process: store.ProcessRecord{
			PID: s.Process.PID, PIDStartTime: startTimeIf(s.Process.PID, inst.pidStart),
			APISocket: s.Process.APISocket, LogPath: s.Process.LogPath, MetricsPath: s.Process.MetricsPath,
			ConsolePath: s.Process.ConsolePath, VsockPath: s.Process.VsockPath,
			Jailed: s.Process.Jailed, Chroot: s.Process.Chroot,
			UID: s.Process.UID, GID: s.Process.GID, Cgroup: s.Process.Cgroup,
		},
		Dir:            s.Dir,
		CreatedAt:      s.CreatedAt,
		ReadyAt:        s.ReadyAt,
		StoppedAt:      s.StoppedAt,
		TTL:            s.TTL,
		ExpiresAt:      s.ExpiresAt,
		FailureReason:  s.FailureReason,
		RestoredFrom:   s.RestoredFrom,
		LastPause:      s.LastPause,
		LastSnapshotID: s.LastSnapshotID,
		Removing:       inst.removing,
	}
}

// sandboxOf converts a persisted record back into a Sandbox.
func sandboxOf(r store.SandboxRecord) Sandbox {
	labels := maps.Clone(r.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	return Sandbox{
		ID:     r.ID,
		Labels: labels,
		State:  State(r.State),
		Hardware: Hardware{
			VCPUs: r.Hardware.VCPUs, MemoryMiB: r.Hardware.MemoryMiB,
			Kernel: r.Hardware.Kernel, Initrd: r.Hardware.Initrd, Rootfs: r.Hardware.Rootfs,
			Disk: r.Hardware.Disk, BootArgs: r.Hardware.BootArgs, TrackDirtyPages: r.Hardware.TrackDirtyPages,
		},
		Network: Network{
			TAP: r.Network.TAP, MAC: r.Network.MAC, IP: r.Network.IP, Gateway: r.Network.Gateway,
			DNS: slices.Clone(r.Network.DNS), Netns: r.Network.Netns, GuestIP: r.Network.GuestIP,
			PrefixLen: r.Network.PrefixLen,
		},
		Process: Process{
			PID: r.Process.PID, APISocket: r.Process.APISocket, LogPath: r.Process.LogPath,
			MetricsPath: r.Process.MetricsPath, ConsolePath: r.Process.ConsolePath,
			Jailed: r.Process.Jailed, Chroot: r.Process.Chroot, UID: r.Process.UID, GID: r.Process.GID,
			Cgroup: r.Process.Cgroup, VsockPath: r.Process.VsockPath,
		},
		Dir:            r.Dir,
		CreatedAt:      r.CreatedAt,
		ReadyAt:        r.ReadyAt,
		StoppedAt:      r.StoppedAt,
		TTL:            r.TTL,
		ExpiresAt:      r.ExpiresAt,
		FailureReason:  r.FailureReason,
		RestoredFrom:   r.RestoredFrom,
		LastPause:      r.LastPause,
		LastSnapshotID: r.LastSnapshotID,
	}
}

// startTimeIf returns t when a VMM runs (pid != 0), else 0.
func startTimeIf(pid int, t uint64) uint64 {
	if pid == 0 {
		return 0
	}
	return t
}
