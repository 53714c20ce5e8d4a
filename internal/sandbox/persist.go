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
		// Hardware and Network have the same fields as their records: a
		// conversion, which stops compiling when the two drift apart.
		Hardware: store.HardwareRecord(s.Hardware),
		Network:  networkRecord(s.Network),
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

// networkRecord converts a network identity into its record (a deep copy).
func networkRecord(n Network) store.NetworkRecord {
	r := store.NetworkRecord(n)
	r.DNS = slices.Clone(n.DNS)
	return r
}

// networkOfRecord converts a network record back (a deep copy).
func networkOfRecord(r store.NetworkRecord) Network {
	n := Network(r)
	n.DNS = slices.Clone(r.DNS)
	return n
}

// sandboxOf converts a persisted record back into a Sandbox.
func sandboxOf(r store.SandboxRecord) Sandbox {
	labels := maps.Clone(r.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	return Sandbox{
		ID:       r.ID,
		Labels:   labels,
		State:    State(r.State),
		Hardware: Hardware(r.Hardware),
		Network:  networkOfRecord(r.Network),
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
