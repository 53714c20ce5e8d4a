package store

import (
	"net/netip"
	"time"
)

// SandboxRecord is the persisted form of a sandbox. It is a plain value: the
// store copies it in and out as JSON, so callers may keep and modify it.
type SandboxRecord struct {
	ID       string            `json:"id"`
	Labels   map[string]string `json:"labels,omitempty"`
	State    string            `json:"state"`
	Hardware HardwareRecord    `json:"hardware"`
	Network  NetworkRecord     `json:"network"`
	Process  ProcessRecord     `json:"process"`
	// Dir is the sandbox's directory (data_dir/sandboxes/{id}).
	Dir       string    `json:"dir,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	ReadyAt   time.Time `json:"ready_at"`
	StoppedAt time.Time `json:"stopped_at"`
	// TTL is the sandbox's lifetime; ExpiresAt is its deadline (zero
	// without a TTL). Recovery re-arms the timer with the time left.
	TTL       time.Duration `json:"ttl,omitempty"`
	ExpiresAt time.Time     `json:"expires_at"`
	// FailureReason says why the sandbox failed or why its VMM exited.
	FailureReason string `json:"failure_reason,omitempty"`
	// RestoredFrom is the snapshot id a restored sandbox came from.
	RestoredFrom string `json:"restored_from,omitempty"`
	// LastPause is how long the last checkpoint kept the sandbox paused.
	LastPause time.Duration `json:"last_pause,omitempty"`
	// LastSnapshotID is the last snapshot taken of (or restored into) the
	// sandbox's VMM.
	LastSnapshotID string `json:"last_snapshot_id,omitempty"`
	// Removing says that a removal began: its VMM is gone and its
	// resources are being released. The next start finishes it.
	Removing bool `json:"removing,omitempty"`
}

// HardwareRecord is a sandbox's persisted machine configuration.
type HardwareRecord struct {
	VCPUs           int    `json:"vcpus"`
	MemoryMiB       int    `json:"memory_mib"`
	Kernel          string `json:"kernel,omitempty"`
	Initrd          string `json:"initrd,omitempty"`
	Rootfs          string `json:"rootfs,omitempty"`
	Disk            string `json:"disk,omitempty"`
	BootArgs        string `json:"boot_args,omitempty"`
	TrackDirtyPages bool   `json:"track_dirty_pages,omitempty"`
}

// NetworkRecord is a sandbox's persisted network identity (zero when the
// sandbox has no network).
type NetworkRecord struct {
	TAP       string   `json:"tap,omitempty"`
	MAC       string   `json:"mac,omitempty"`
	IP        string   `json:"ip,omitempty"`
	Gateway   string   `json:"gateway,omitempty"`
	DNS       []string `json:"dns,omitempty"`
	Netns     string   `json:"netns,omitempty"`
	GuestIP   string   `json:"guest_ip,omitempty"`
	PrefixLen int      `json:"prefix_len,omitempty"`
}

// ProcessRecord identifies a sandbox's VMM process well enough to re-adopt
// it after a daemon restart: a live pid is only the same VMM if its start
// time (PIDStartTime) and the API socket's instance id still match.
type ProcessRecord struct {
	// PID is 0 when no VMM runs.
	PID int `json:"pid,omitempty"`
	// PIDStartTime is field 22 of /proc/PID/stat (clock ticks since boot),
	// as returned by vmm.ProcessStartTime.
	PIDStartTime uint64 `json:"pid_start_time,omitempty"`
	// InstanceID is the id Firecracker reports on its API socket (GET /).
	InstanceID  string `json:"instance_id,omitempty"`
	APISocket   string `json:"api_socket,omitempty"`
	LogPath     string `json:"log_path,omitempty"`
	MetricsPath string `json:"metrics_path,omitempty"`
	ConsolePath string `json:"console_path,omitempty"`
	// VsockPath is the host path of the vsock device's unix socket.
	VsockPath string `json:"vsock_path,omitempty"`

	// Jailed is true when the VMM runs under the jailer; the Jail fields
	// below are then what recovery must find or clean up.
	Jailed bool `json:"jailed,omitempty"`
	// JailID is the jailer's --id.
	JailID string `json:"jail_id,omitempty"`
	// JailDir is <chroot_base>/<exec name>/<id>.
	JailDir string `json:"jail_dir,omitempty"`
	// Chroot is JailDir/root.
	Chroot string `json:"chroot,omitempty"`
	UID    int    `json:"uid,omitempty"`
	GID    int    `json:"gid,omitempty"`
	// Cgroup is the cgroup path shown to users; Cgroups are every cgroup
	// directory the jailer created for this VMM.
	Cgroup  string   `json:"cgroup,omitempty"`
	Cgroups []string `json:"cgroups,omitempty"`
}

// Lease records that an address belongs to a sandbox.
type Lease struct {
	IP        netip.Addr `json:"ip"`
	SandboxID string     `json:"sandbox_id"`
}

// EventRecord is one persisted event. Seq is assigned by AppendEvent and is
// contiguous: 1, 2, 3, ...
type EventRecord struct {
	Seq        uint64            `json:"seq"`
	SandboxID  string            `json:"sandbox_id"`
	Action     string            `json:"action"`
	State      string            `json:"state,omitempty"`
	Time       time.Time         `json:"time"`
	Attributes map[string]string `json:"attributes,omitempty"`
}

// SnapshotRecord indexes one committed snapshot. The snapshot's files and
// its meta.json live in the catalog (data_dir/snapshots); the record is
// written once the catalog has committed the snapshot and deleted when
// the catalog has removed it, and the daemon reconciles both at start.
type SnapshotRecord struct {
	ID        string    `json:"id"`
	SandboxID string    `json:"sandbox_id"`
	Name      string    `json:"name"`
	Type      string    `json:"type"`
	ParentID  string    `json:"parent_id,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// Dir is the snapshot's directory in the catalog.
	Dir       string `json:"dir"`
	SizeBytes int64  `json:"size_bytes"`
	// FirecrackerVersion and SnapshotVersion are those of the binary that
	// wrote it.
	FirecrackerVersion string `json:"firecracker_version,omitempty"`
	SnapshotVersion    string `json:"snapshot_version,omitempty"`
}
