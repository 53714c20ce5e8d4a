package sandbox

import (
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/ids"
)

// State is the lifecycle state of a sandbox. The values are the lower-case
// names used by the CLI and in events.
type State string

// The states of the seed's state machine.
const (
	StateStarting State = "starting"
	StateReady    State = "ready"
	StateRunning  State = "running"
	StateStopping State = "stopping"
	StateStopped  State = "stopped"
	StateFailed   State = "failed"
)

// States lists every state in lifecycle order.
var States = []State{StateStarting, StateReady, StateRunning, StateStopping, StateStopped, StateFailed}

// Event actions published by the manager.
const (
	ActionCreated  = "created"  // accepted, boot starts (state starting)
	ActionReady    = "ready"    // boot succeeded (state ready)
	ActionFailed   = "failed"   // boot failed or the VMM died abnormally (state failed)
	ActionStopping = "stopping" // a stop began (state stopping)
	ActionStopped  = "stopped"  // a requested stop finished (state stopped)
	ActionExited   = "exited"   // the VMM exited on its own (state stopped or failed)
	ActionRemoved  = "removed"  // the sandbox and its resources are gone
	ActionExpired  = "expired"  // the TTL ran out; a removed event follows
	// ActionCheckpointed: a snapshot was taken (attributes snapshot_id, name, type, pause_ms).
	ActionCheckpointed = "checkpointed"
	// ActionRestored: a sandbox was created from a snapshot (state starting; attribute snapshot_id).
	ActionRestored = "restored"
)

// Hardware is a sandbox's machine configuration.
type Hardware struct {
	VCPUs     int
	MemoryMiB int
	// Kernel, Initrd and Rootfs are resolved host paths (symlinks followed).
	Kernel string
	Initrd string
	Rootfs string
	// Disk is the sandbox's own writable copy of Rootfs.
	Disk     string
	BootArgs string
	// TrackDirtyPages enables dirty-page tracking in Firecracker.
	TrackDirtyPages bool
}

// Network is a sandbox's network identity (filled by the network manager;
// zero when the sandbox has no network).
type Network struct {
	TAP       string
	MAC       string
	IP        string
	Gateway   string
	DNS       []string
	Netns     string
	GuestIP   string
	PrefixLen int
}

// Process describes the VMM process of a sandbox.
type Process struct {
	// PID is 0 when no VMM runs.
	PID         int
	APISocket   string
	LogPath     string
	MetricsPath string
	ConsolePath string
	Jailed      bool
	Chroot      string
	UID, GID    int
	Cgroup      string
	// VsockPath is the host path of the vsock device's unix socket.
	VsockPath string
}

// Sandbox is a snapshot (a copy) of a sandbox's record. Callers may keep and
// modify it freely.
type Sandbox struct {
	ID       string
	Labels   map[string]string
	State    State
	Hardware Hardware
	Network  Network
	Process  Process
	// Dir is the sandbox's directory (data_dir/sandboxes/{id}).
	Dir       string
	CreatedAt time.Time
	ReadyAt   time.Time // zero until ready
	StoppedAt time.Time // zero until stopped or failed
	TTL       time.Duration
	ExpiresAt time.Time // zero without TTL
	// FailureReason says why the sandbox failed, or why its VMM exited.
	FailureReason string
	// RestoredFrom is the snapshot id a restored sandbox came from.
	RestoredFrom string
	// LastPause is how long the last checkpoint kept the sandbox paused.
	LastPause time.Duration
	// LastSnapshotID is the last snapshot taken of (or restored into) this
	// sandbox's VMM: the base of a Diff checkpoint.
	LastSnapshotID string
}

// CreateRequest asks for a new sandbox. Zero values take the configured
// defaults; paths are untrusted and validated against the allowed
// directories.
type CreateRequest struct {
	VCPUs           int
	MemoryMiB       int
	Kernel          string
	Initrd          string
	Rootfs          string
	BootArgs        string
	Labels          map[string]string
	TTL             time.Duration
	TrackDirtyPages bool
}

// ListFilter selects sandboxes for List. Zero values match everything.
type ListFilter struct {
	// States keeps sandboxes in any of these states.
	States []State
	// Labels keeps sandboxes that carry every one of these labels.
	Labels map[string]string
}

// ValidID reports whether id has the form of a sandbox id.
func ValidID(id string) bool { return ids.Valid(id) }
