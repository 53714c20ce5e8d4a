package store

import "time"

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
// time (PIDStartTime) still matches and its API socket reports the
// sandbox's id as its instance id.
//
// Records written before schema version 3 may also carry instance_id,
// jail_id (both always the sandbox's id), jail_dir and cgroups (never
// written); the version 3 migration deletes those keys, and decoding
// ignores them anyway.
type ProcessRecord struct {
	// PID is 0 when no VMM runs.
	PID int `json:"pid,omitempty"`
	// PIDStartTime is field 22 of /proc/PID/stat (clock ticks since boot),
	// as returned by vmm.ProcessStartTime.
	PIDStartTime uint64 `json:"pid_start_time,omitempty"`
	APISocket    string `json:"api_socket,omitempty"`
	LogPath      string `json:"log_path,omitempty"`
	MetricsPath  string `json:"metrics_path,omitempty"`
	ConsolePath  string `json:"console_path,omitempty"`
	// VsockPath is the host path of the vsock device's unix socket.
	VsockPath string `json:"vsock_path,omitempty"`

	// Jailed is true when the VMM runs under the jailer (whose --id is
	// the sandbox's id); the fields below are then what recovery must
	// find or clean up.
	Jailed bool `json:"jailed,omitempty"`
	// Chroot is the jail's root, <chroot_base>/<exec name>/<id>/root.
	Chroot string `json:"chroot,omitempty"`
	UID    int    `json:"uid,omitempty"`
	GID    int    `json:"gid,omitempty"`
	// Cgroup is the cgroup path shown to users.
	Cgroup string `json:"cgroup,omitempty"`
}

// EventRecord is one persisted event. Seq is assigned (or checked) by
// AppendEvent and increases, with gaps where events were never written or
// the sequence was advanced.
type EventRecord struct {
	Seq        uint64            `json:"seq"`
	SandboxID  string            `json:"sandbox_id"`
	Action     string            `json:"action"`
	State      string            `json:"state,omitempty"`
	Time       time.Time         `json:"time"`
	Attributes map[string]string `json:"attributes,omitempty"`
}
