package server

import (
	"fmt"
	"math"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/events"
	"github.com/firecracker-vmm/firecracker-vmm/internal/sandbox"
	"github.com/firecracker-vmm/firecracker-vmm/internal/snapshot"
)

// stateToProtoMap and its inverse map the domain states to the enum.
var stateToProtoMap = map[sandbox.State]sandboxv1.SandboxState{
	sandbox.StateStarting: sandboxv1.SandboxState_SANDBOX_STATE_STARTING,
	sandbox.StateReady:    sandboxv1.SandboxState_SANDBOX_STATE_READY,
	sandbox.StateRunning:  sandboxv1.SandboxState_SANDBOX_STATE_RUNNING,
	sandbox.StateStopping: sandboxv1.SandboxState_SANDBOX_STATE_STOPPING,
	sandbox.StateStopped:  sandboxv1.SandboxState_SANDBOX_STATE_STOPPED,
	sandbox.StateFailed:   sandboxv1.SandboxState_SANDBOX_STATE_FAILED,
}

// stateToProto maps a domain state to the enum (UNSPECIFIED when unknown).
func stateToProto(s sandbox.State) sandboxv1.SandboxState {
	return stateToProtoMap[s]
}

// stateFromProto maps an enum value to a domain state; UNSPECIFIED and
// unknown values are invalid arguments.
func stateFromProto(s sandboxv1.SandboxState) (sandbox.State, error) {
	for ds, ps := range stateToProtoMap {
		if ps == s {
			return ds, nil
		}
	}
	return "", fmt.Errorf("state %v: not a sandbox state: %w", s, errdefs.ErrInvalidArgument)
}

// durationFromProto converts an optional duration; nil is zero. An
// out-of-range encoding is an invalid argument; whether the value is
// acceptable (sign, bounds) is the manager's call.
func durationFromProto(field string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, fmt.Errorf("%s: %v: %w", field, err, errdefs.ErrInvalidArgument)
	}
	return d.AsDuration(), nil
}

// timestampToProto converts a time; the zero time is unset (nil).
func timestampToProto(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// durationToProto converts a duration; zero is unset (nil).
func durationToProto(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

// clampUint32 converts a non-negative int to uint32, saturating.
func clampUint32(v int) uint32 {
	switch {
	case v < 0:
		return 0
	case uint64(v) > math.MaxUint32:
		return math.MaxUint32
	}
	return uint32(v)
}

// clampInt32 converts an int to int32, saturating.
func clampInt32(v int) int32 {
	switch {
	case v < math.MinInt32:
		return math.MinInt32
	case v > math.MaxInt32:
		return math.MaxInt32
	}
	return int32(v)
}

// sandboxToProto converts the manager's record into the API message.
func sandboxToProto(sb sandbox.Sandbox) *sandboxv1.Sandbox {
	hw := sb.Hardware
	p := sb.Process
	return &sandboxv1.Sandbox{
		Id:     sb.ID,
		Labels: sb.Labels,
		State:  stateToProto(sb.State),
		Hardware: &sandboxv1.Hardware{
			Vcpus:     clampUint32(hw.VCPUs),
			MemoryMib: clampUint32(hw.MemoryMiB),
			Kernel:    hw.Kernel,
			Initrd:    hw.Initrd,
			Rootfs:    hw.Rootfs,
			BootArgs:  hw.BootArgs,
			Disk:      hw.Disk,
		},
		Network: networkToProto(sb.Network),
		Process: &sandboxv1.ProcessInfo{
			Pid:         clampInt32(p.PID),
			ApiSocket:   p.APISocket,
			LogPath:     p.LogPath,
			MetricsPath: p.MetricsPath,
			ConsolePath: p.ConsolePath,
			Jailed:      p.Jailed,
			Chroot:      p.Chroot,
			Uid:         clampUint32(p.UID),
			Gid:         clampUint32(p.GID),
			Cgroup:      p.Cgroup,
			VsockSocket: p.VsockPath,
		},
		CreatedAt:      timestampToProto(sb.CreatedAt),
		ReadyAt:        timestampToProto(sb.ReadyAt),
		StoppedAt:      timestampToProto(sb.StoppedAt),
		Ttl:            durationToProto(sb.TTL),
		ExpiresAt:      timestampToProto(sb.ExpiresAt),
		FailureReason:  sb.FailureReason,
		RestoredFrom:   sb.RestoredFrom,
		LastPause:      durationToProto(sb.LastPause),
		LastSnapshotId: sb.LastSnapshotID,
	}
}

// snapshotToProto converts a catalog entry into the API message.
func snapshotToProto(m snapshot.Meta) *sandboxv1.Snapshot {
	typ := sandboxv1.SnapshotType_SNAPSHOT_TYPE_FULL
	if m.Type == snapshot.TypeDiff {
		typ = sandboxv1.SnapshotType_SNAPSHOT_TYPE_DIFF
	}
	hw := m.Hardware
	out := &sandboxv1.Snapshot{
		Id:                 m.ID,
		Name:               m.Name,
		SandboxId:          m.SandboxID,
		CreatedAt:          timestampToProto(m.CreatedAt),
		Type:               typ,
		FirecrackerVersion: m.FirecrackerVersion,
		SnapshotVersion:    m.SnapshotVersion,
		Hardware: &sandboxv1.Hardware{
			Vcpus: clampUint32(hw.VCPUs), MemoryMib: clampUint32(hw.MemoryMiB),
			Kernel: hw.Kernel, Initrd: hw.Initrd, Rootfs: hw.Rootfs, BootArgs: hw.BootArgs,
		},
		SizeBytes:     uint64(max(m.SizeBytes(), 0)),
		PauseDuration: durationToProto(m.PauseDuration),
		Path:          m.Dir,
		ParentId:      m.ParentID,
	}
	if n := m.Network; n != nil {
		out.Network = &sandboxv1.NetworkInfo{TapDevice: n.TAP, MacAddress: n.GuestMAC, GuestIpAddress: n.GuestIP}
	}
	return out
}

// networkToProto converts a network identity; a sandbox without network
// gets nil.
func networkToProto(n sandbox.Network) *sandboxv1.NetworkInfo {
	if n.TAP == "" && n.MAC == "" && n.IP == "" && n.Gateway == "" && len(n.DNS) == 0 && n.Netns == "" && n.GuestIP == "" {
		return nil
	}
	return &sandboxv1.NetworkInfo{
		TapDevice:      n.TAP,
		MacAddress:     n.MAC,
		IpAddress:      n.IP,
		Gateway:        n.Gateway,
		Dns:            n.DNS,
		Netns:          n.Netns,
		GuestIpAddress: n.GuestIP,
	}
}

// eventToProto converts an exchange event into the API message.
func eventToProto(ev events.Event) *sandboxv1.Event {
	return &sandboxv1.Event{
		Seq:        ev.Seq,
		SandboxId:  ev.SandboxID,
		Action:     ev.Action,
		State:      stateToProto(sandbox.State(ev.State)),
		Time:       timestampToProto(ev.Time),
		Attributes: ev.Attributes,
	}
}
