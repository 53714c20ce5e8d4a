package firecracker

import "encoding/json"

// InstanceState is the state reported by GET / .
type InstanceState string

// Instance states reported by Firecracker.
const (
	// StateNotStarted is the state of a process before InstanceStart or a snapshot load.
	StateNotStarted InstanceState = "Not started"
	// StateRunning is the state of a started or resumed microVM.
	StateRunning InstanceState = "Running"
	// StatePaused is the state of a paused microVM (also right after a snapshot load without resume_vm).
	StatePaused InstanceState = "Paused"
)

// InstanceInfo is the body of GET / .
type InstanceInfo struct {
	// AppName is the application name, "Firecracker".
	AppName string `json:"app_name"`
	// ID is the instance id given with --id.
	ID string `json:"id"`
	// State is the current state of the microVM.
	State InstanceState `json:"state"`
	// VMMVersion is the Firecracker build version.
	VMMVersion string `json:"vmm_version"`
}

// FirecrackerVersion is the body of GET /version.
type FirecrackerVersion struct {
	// FirecrackerVersion is the Firecracker build version, e.g. "1.16.1".
	FirecrackerVersion string `json:"firecracker_version"`
}

// HugePages selects the huge page configuration backing guest memory.
type HugePages string

// Huge page configurations accepted by Firecracker v1.16.1.
const (
	// HugePagesNone backs guest memory with normal pages (the default).
	HugePagesNone HugePages = "None"
	// HugePages2M backs guest memory with 2 MiB hugetlbfs pages.
	HugePages2M HugePages = "2M"
)

// MachineConfiguration is the body of PUT /machine-config and of
// GET /machine-config. The deprecated cpu_template field is deliberately
// not modelled.
type MachineConfiguration struct {
	// VCPUCount is the number of vCPUs (1..32; 1 or even with SMT). Required.
	VCPUCount int `json:"vcpu_count"`
	// MemSizeMiB is the guest memory size in MiB. Required.
	MemSizeMiB int `json:"mem_size_mib"`
	// SMT enables simultaneous multithreading (x86 only). Optional.
	SMT *bool `json:"smt,omitempty"`
	// TrackDirtyPages enables KVM dirty page tracking for diff snapshots. Optional.
	TrackDirtyPages *bool `json:"track_dirty_pages,omitempty"`
	// HugePages selects huge pages; empty means Firecracker's default (None).
	HugePages HugePages `json:"huge_pages,omitempty"`
}

// BootSource is the body of PUT /boot-source.
type BootSource struct {
	// KernelImagePath is the path of the guest kernel. Required.
	KernelImagePath string `json:"kernel_image_path"`
	// InitrdPath is the path of an optional initrd.
	InitrdPath string `json:"initrd_path,omitempty"`
	// BootArgs is the kernel command line. Empty means Firecracker's default
	// command line (which includes reboot=k).
	BootArgs string `json:"boot_args,omitempty"`
}

// CacheType is a block device caching strategy.
type CacheType string

// Block device cache types.
const (
	// CacheUnsafe does not advertise flush support (the default).
	CacheUnsafe CacheType = "Unsafe"
	// CacheWriteback advertises virtio flush; flushes become fsync on the host.
	CacheWriteback CacheType = "Writeback"
)

// IOEngine is a block device I/O engine.
type IOEngine string

// Block device I/O engines.
const (
	// IOEngineSync uses synchronous I/O (the default).
	IOEngineSync IOEngine = "Sync"
	// IOEngineAsync uses io_uring (host kernel > 5.10.51).
	IOEngineAsync IOEngine = "Async"
)

// TokenBucket is one bucket of a RateLimiter. Size or RefillTime zero means unlimited.
type TokenBucket struct {
	// Size is the bucket capacity in tokens. Required.
	Size int64 `json:"size"`
	// RefillTime is the time in milliseconds to refill the bucket. Required.
	RefillTime int64 `json:"refill_time"`
	// OneTimeBurst is an optional initial burst budget.
	OneTimeBurst *int64 `json:"one_time_burst,omitempty"`
}

// RateLimiter limits bandwidth (bytes) and operations independently.
type RateLimiter struct {
	// Bandwidth is the bucket whose tokens are bytes. Optional.
	Bandwidth *TokenBucket `json:"bandwidth,omitempty"`
	// Ops is the bucket whose tokens are operations. Optional.
	Ops *TokenBucket `json:"ops,omitempty"`
}

// Drive is the body of PUT /drives/{drive_id}. For a virtio-block device set
// PathOnHost (and IsReadOnly); for vhost-user-block set only Socket.
type Drive struct {
	// DriveID is the device id ([A-Za-z0-9_]); it is also the path id. Required.
	DriveID string `json:"drive_id"`
	// PartUUID is the root partition's PARTUUID (used only for the root device).
	PartUUID string `json:"partuuid,omitempty"`
	// IsRootDevice marks the root device. Required.
	IsRootDevice bool `json:"is_root_device"`
	// CacheType is the caching strategy; empty means Unsafe.
	CacheType CacheType `json:"cache_type,omitempty"`
	// IsReadOnly makes a virtio-block device read-only. Optional (false).
	IsReadOnly *bool `json:"is_read_only,omitempty"`
	// PathOnHost is the backing file of a virtio-block device.
	PathOnHost string `json:"path_on_host,omitempty"`
	// RateLimiter limits the device's I/O. Optional.
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
	// IOEngine is the I/O engine; empty means Sync.
	IOEngine IOEngine `json:"io_engine,omitempty"`
	// Socket is the vhost-user-block backend socket (excludes the virtio fields).
	Socket string `json:"socket,omitempty"`
}

// PartialDrive is the body of PATCH /drives/{drive_id} (post-boot).
type PartialDrive struct {
	// DriveID is the device id; it is also the path id. Required.
	DriveID string `json:"drive_id"`
	// PathOnHost switches the backing file (or picks up a resize). Optional.
	PathOnHost string `json:"path_on_host,omitempty"`
	// RateLimiter is merged with the current limiter. Optional.
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// NetworkInterface is the body of PUT /network-interfaces/{iface_id}.
type NetworkInterface struct {
	// IfaceID is the interface id ([A-Za-z0-9_]); it is also the path id. Required.
	IfaceID string `json:"iface_id"`
	// HostDevName is the TAP device name (< 16 bytes). Required.
	HostDevName string `json:"host_dev_name"`
	// GuestMAC is the guest MAC address; empty lets the guest choose.
	GuestMAC string `json:"guest_mac,omitempty"`
	// MTU is advertised to the guest (68..65535); zero means not advertised.
	MTU int `json:"mtu,omitempty"`
	// RxRateLimiter limits received traffic. Optional.
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	// TxRateLimiter limits transmitted traffic. Optional.
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// PartialNetworkInterface is the body of PATCH /network-interfaces/{iface_id}.
type PartialNetworkInterface struct {
	// IfaceID is the interface id; it is also the path id. Required.
	IfaceID string `json:"iface_id"`
	// RxRateLimiter is merged with the current limiter. Optional.
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	// TxRateLimiter is merged with the current limiter. Optional.
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// Vsock is the body of PUT /vsock. The deprecated vsock_id is not modelled.
type Vsock struct {
	// GuestCID is the guest's context id. Required.
	GuestCID uint32 `json:"guest_cid"`
	// UDSPath is the host unix socket Firecracker binds. Required.
	UDSPath string `json:"uds_path"`
}

// LogLevel is a Firecracker logger level.
type LogLevel string

// Logger levels accepted by the API.
const (
	// LogLevelError logs errors only.
	LogLevelError LogLevel = "Error"
	// LogLevelWarning logs warnings and errors.
	LogLevelWarning LogLevel = "Warning"
	// LogLevelInfo is Firecracker's default level.
	LogLevelInfo LogLevel = "Info"
	// LogLevelDebug logs debug records.
	LogLevelDebug LogLevel = "Debug"
	// LogLevelTrace logs everything.
	LogLevelTrace LogLevel = "Trace"
	// LogLevelOff disables logging.
	LogLevelOff LogLevel = "Off"
)

// Logger is the body of PUT /logger. All fields are optional.
type Logger struct {
	// Level is the log level; empty means Firecracker's default.
	Level LogLevel `json:"level,omitempty"`
	// LogPath is the log file or FIFO.
	LogPath string `json:"log_path,omitempty"`
	// ShowLevel prefixes log lines with their level.
	ShowLevel *bool `json:"show_level,omitempty"`
	// ShowLogOrigin adds file:line to log lines.
	ShowLogOrigin *bool `json:"show_log_origin,omitempty"`
	// Module filters records by Rust module path prefix.
	Module string `json:"module,omitempty"`
}

// Metrics is the body of PUT /metrics (v1.16.1 knows only metrics_path).
type Metrics struct {
	// MetricsPath is the metrics file or FIFO. Required.
	MetricsPath string `json:"metrics_path"`
}

// MMDSVersion is the MMDS protocol version.
type MMDSVersion string

// MMDS versions.
const (
	// MMDSV1 is the token-less version (deprecated by Firecracker, the default when omitted).
	MMDSV1 MMDSVersion = "V1"
	// MMDSV2 requires session tokens.
	MMDSV2 MMDSVersion = "V2"
)

// MMDSConfig is the body of PUT /mmds/config.
type MMDSConfig struct {
	// Version is the MMDS version; empty means V1 (and Firecracker then flags deprecation).
	Version MMDSVersion `json:"version,omitempty"`
	// NetworkInterfaces lists the interface ids that forward MMDS traffic. Required, non-empty.
	NetworkInterfaces []string `json:"network_interfaces"`
	// IPv4Address is the link-local MMDS address; empty means 169.254.169.254.
	IPv4Address string `json:"ipv4_address,omitempty"`
	// IMDSCompat makes MMDS answer text/plain regardless of Accept. Optional.
	IMDSCompat *bool `json:"imds_compat,omitempty"`
}

// Entropy is the body of PUT /entropy (the swagger's EntropyDevice).
type Entropy struct {
	// RateLimiter limits the virtio-rng device. Optional.
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// Balloon is the body of PUT /balloon and of GET /balloon.
type Balloon struct {
	// AmountMiB is the target balloon size. Required.
	AmountMiB int `json:"amount_mib"`
	// DeflateOnOOM lets the balloon deflate under guest memory pressure. Required.
	DeflateOnOOM bool `json:"deflate_on_oom"`
	// StatsPollingIntervalS enables statistics when non-zero. Optional.
	StatsPollingIntervalS *int `json:"stats_polling_interval_s,omitempty"`
	// FreePageHinting enables free page hinting. Optional.
	FreePageHinting *bool `json:"free_page_hinting,omitempty"`
	// FreePageReporting enables free page reporting. Optional.
	FreePageReporting *bool `json:"free_page_reporting,omitempty"`
}

// ActionType is the action of PUT /actions.
type ActionType string

// Actions accepted by PUT /actions.
const (
	// ActionInstanceStart builds and starts the configured microVM.
	ActionInstanceStart ActionType = "InstanceStart"
	// ActionFlushMetrics writes one metrics line (post-boot only).
	ActionFlushMetrics ActionType = "FlushMetrics"
	// ActionSendCtrlAltDel injects Ctrl+Alt+Del into the guest (x86, post-boot only).
	ActionSendCtrlAltDel ActionType = "SendCtrlAltDel"
)

// InstanceActionInfo is the body of PUT /actions.
type InstanceActionInfo struct {
	// ActionType is the action to perform. Required.
	ActionType ActionType `json:"action_type"`
}

// VMState is the requested state of PATCH /vm.
type VMState string

// States accepted by PATCH /vm.
const (
	// VMStatePaused pauses the vCPUs.
	VMStatePaused VMState = "Paused"
	// VMStateResumed resumes the vCPUs.
	VMStateResumed VMState = "Resumed"
)

// VM is the body of PATCH /vm.
type VM struct {
	// State is the requested state. Required.
	State VMState `json:"state"`
}

// SnapshotType is the kind of snapshot to create.
type SnapshotType string

// Snapshot types.
const (
	// SnapshotFull writes all guest memory.
	SnapshotFull SnapshotType = "Full"
	// SnapshotDiff writes only pages dirtied since the previous snapshot.
	SnapshotDiff SnapshotType = "Diff"
)

// SnapshotCreateParams is the body of PUT /snapshot/create.
type SnapshotCreateParams struct {
	// MemFilePath is the guest memory file to write. Required.
	MemFilePath string `json:"mem_file_path"`
	// SnapshotPath is the microVM state file to write. Required.
	SnapshotPath string `json:"snapshot_path"`
	// SnapshotType is Full or Diff; empty means Full.
	SnapshotType SnapshotType `json:"snapshot_type,omitempty"`
}

// MemoryBackendType selects how guest memory is provided on snapshot load.
type MemoryBackendType string

// Memory backend types.
const (
	// MemoryBackendFile maps the memory file privately.
	MemoryBackendFile MemoryBackendType = "File"
	// MemoryBackendUffd hands a userfaultfd to a page-fault handler on a unix socket.
	MemoryBackendUffd MemoryBackendType = "Uffd"
)

// MemoryBackend describes the guest memory source of a snapshot load.
type MemoryBackend struct {
	// BackendType is File or Uffd. Required.
	BackendType MemoryBackendType `json:"backend_type"`
	// BackendPath is the memory file (File) or the handler's socket (Uffd). Required.
	BackendPath string `json:"backend_path"`
}

// NetworkOverride replaces an interface's TAP device on snapshot load.
type NetworkOverride struct {
	// IfaceID is the interface to modify. Required.
	IfaceID string `json:"iface_id"`
	// HostDevName is the new TAP name. Required.
	HostDevName string `json:"host_dev_name"`
}

// VsockOverride replaces the vsock device's host socket on snapshot load.
type VsockOverride struct {
	// UDSPath is the new host socket path. Required.
	UDSPath string `json:"uds_path"`
}

// SnapshotLoadParams is the body of PUT /snapshot/load. The memory source is
// always given as mem_backend; the deprecated mem_file_path and
// enable_diff_snapshots fields are not modelled.
type SnapshotLoadParams struct {
	// SnapshotPath is the microVM state file. Required.
	SnapshotPath string `json:"snapshot_path"`
	// MemBackend is the guest memory source. Always sent.
	MemBackend MemoryBackend `json:"mem_backend"`
	// TrackDirtyPages enables dirty page tracking in the restored VM. Optional.
	TrackDirtyPages *bool `json:"track_dirty_pages,omitempty"`
	// ResumeVM resumes the VM after a successful load. Optional.
	ResumeVM *bool `json:"resume_vm,omitempty"`
	// NetworkOverrides replace TAP names of restored interfaces. Optional.
	NetworkOverrides []NetworkOverride `json:"network_overrides,omitempty"`
	// VsockOverride replaces the vsock host socket path. Optional.
	VsockOverride *VsockOverride `json:"vsock_override,omitempty"`
	// ClockRealtime advances kvmclock by the wall time elapsed (x86). Optional.
	ClockRealtime *bool `json:"clock_realtime,omitempty"`
}

// FullVMConfiguration is the body of GET /vm/config. Sections absent from
// the microVM are null and decode as nil. Sections this project does not
// use (cpu-config, memory-hotplug, pmem) are kept as raw JSON.
type FullVMConfiguration struct {
	// Balloon is the balloon device, if any.
	Balloon *Balloon `json:"balloon,omitempty"`
	// Drives are the block devices.
	Drives []Drive `json:"drives,omitempty"`
	// BootSource is the boot configuration (empty after a snapshot restore).
	BootSource *BootSource `json:"boot-source,omitempty"`
	// CPUConfig is the custom CPU template, as raw JSON.
	CPUConfig json.RawMessage `json:"cpu-config,omitempty"`
	// Logger is the logger configuration, if any.
	Logger *Logger `json:"logger,omitempty"`
	// MachineConfig is the machine configuration.
	MachineConfig *MachineConfiguration `json:"machine-config,omitempty"`
	// Metrics is the metrics configuration, if any.
	Metrics *Metrics `json:"metrics,omitempty"`
	// MemoryHotplug is the virtio-mem configuration, as raw JSON.
	MemoryHotplug json.RawMessage `json:"memory-hotplug,omitempty"`
	// MMDSConfig is the MMDS configuration, if any.
	MMDSConfig *MMDSConfig `json:"mmds-config,omitempty"`
	// NetworkInterfaces are the network devices.
	NetworkInterfaces []NetworkInterface `json:"network-interfaces,omitempty"`
	// Pmem are the virtio-pmem devices, as raw JSON.
	Pmem json.RawMessage `json:"pmem,omitempty"`
	// Vsock is the vsock device, if any.
	Vsock *Vsock `json:"vsock,omitempty"`
	// Entropy is the entropy device, if any.
	Entropy *Entropy `json:"entropy,omitempty"`
}

// Bool returns a pointer to b, for optional boolean fields.
func Bool(b bool) *bool { return &b }

// Int returns a pointer to i, for optional integer fields.
func Int(i int) *int { return &i }

// Int64 returns a pointer to i, for optional 64-bit integer fields.
func Int64(i int64) *int64 { return &i }
