package vmm

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"

	"github.com/firecracker-vmm/firecracker-vmm/internal/firecracker"
)

// Limits enforced by Validate.
const (
	// MaxVCPUs is Firecracker's vCPU limit.
	MaxVCPUs = 32
	// MaxBootArgs is the kernel command line limit (including Firecracker's additions).
	MaxBootArgs = 2048
	// maxTAPName is the longest TAP name (IFNAMSIZ-1).
	maxTAPName = 15
	// maxSocketPath is the longest unix socket path (sun_path minus NUL).
	maxSocketPath = 107
)

// Default file names inside a VMM's directory (VMSpec.Dir, or a
// Workspace's Root).
const (
	// DefaultAPISocketName is the API socket's name when VMSpec.APISocket is empty.
	DefaultAPISocketName = "firecracker.sock"
	// DefaultConsoleName is the console file's name when VMSpec.ConsolePath is empty.
	DefaultConsoleName = "console.log"
	// DefaultLogName is the Firecracker log's name in a Workspace.
	DefaultLogName = "firecracker.log"
	// DefaultMetricsName is the metrics file's name in a Workspace.
	DefaultMetricsName = "firecracker.metrics"
	// DefaultVsockName is the vsock host socket's name in a Workspace.
	DefaultVsockName = "vsock.sock"
)

// DriveSpec is a virtio-block device.
type DriveSpec struct {
	// ID is the drive id ([A-Za-z0-9_]). Required.
	ID string
	// Path is the host path of the backing file. Required.
	Path string
	// Root makes this the root device (at most one).
	Root bool
	// ReadOnly attaches the drive read-only.
	ReadOnly bool
	// PartUUID is the root partition's PARTUUID (root only); optional.
	PartUUID string
	// CacheType is optional (Unsafe by default).
	CacheType firecracker.CacheType
	// IOEngine is optional (Sync by default).
	IOEngine firecracker.IOEngine
	// RateLimiter is optional.
	RateLimiter *firecracker.RateLimiter
}

// NICSpec is a virtio-net device backed by a TAP.
type NICSpec struct {
	// ID is the interface id ([A-Za-z0-9_]). Required.
	ID string
	// HostDevName is the TAP name (< 16 bytes). Required.
	HostDevName string
	// GuestMAC is the guest MAC address (xx:xx:xx:xx:xx:xx); optional.
	GuestMAC string
	// MTU is advertised to the guest when non-zero (68..65535).
	MTU int
	// RxRateLimiter is optional.
	RxRateLimiter *firecracker.RateLimiter
	// TxRateLimiter is optional.
	TxRateLimiter *firecracker.RateLimiter
}

// VsockSpec is the vsock device.
type VsockSpec struct {
	// CID is the guest context id (>= 3). Required.
	CID uint32
	// UDSPath is the host unix socket. Required.
	UDSPath string
}

// LoggingSpec configures Firecracker's logger and metrics through flags.
type LoggingSpec struct {
	// LogPath is the log file; empty means logs go to the console.
	LogPath string
	// Level is the log level; empty means the launcher's default.
	Level string
	// MetricsPath is the metrics file; empty means no metrics.
	MetricsPath string
}

// VMSpec is everything needed to boot a microVM. Paths are host paths;
// relative paths are resolved by Firecracker in Dir.
type VMSpec struct {
	// ID is the instance id (1–64 bytes of [A-Za-z0-9-]). Required.
	ID string
	// Dir is the VM's directory (created if missing). Required.
	Dir string
	// APISocket is the API socket path; empty means Dir/firecracker.sock.
	APISocket string
	// ConsolePath is the console file; empty means Dir/console.log.
	ConsolePath string
	// VCPUs is the vCPU count (1..32; 1 or even with SMT). Required.
	VCPUs int
	// MemoryMiB is the guest memory size (> 0). Required.
	MemoryMiB int
	// SMT enables simultaneous multithreading.
	SMT bool
	// TrackDirtyPages enables dirty page tracking (needed for Diff snapshots).
	TrackDirtyPages bool
	// Kernel is the guest kernel. Required. An absolute path is placed
	// in a jail by a jailing launcher (copied from the path); a relative
	// one names a file already in the VMM's working directory (Dir, or
	// the jail's root), which is how the sandbox manager hands over a
	// kernel it checked.
	Kernel string
	// Initrd is an optional initrd, absolute or relative like Kernel.
	Initrd string
	// BootArgs is the kernel command line; empty means Firecracker's default.
	BootArgs string
	// Drives are the block devices.
	Drives []DriveSpec
	// NICs are the network interfaces.
	NICs []NICSpec
	// Vsock is the optional vsock device.
	Vsock *VsockSpec
	// Logging configures the logger and metrics.
	Logging LoggingSpec
	// NetNS is the network namespace (path) the VMM runs in; empty means
	// the caller's.
	NetNS string
}

// withDefaults fills in the default paths.
func (s VMSpec) withDefaults() VMSpec {
	if s.APISocket == "" && s.Dir != "" {
		s.APISocket = filepath.Join(s.Dir, DefaultAPISocketName)
	}
	if s.ConsolePath == "" && s.Dir != "" {
		s.ConsolePath = filepath.Join(s.Dir, DefaultConsoleName)
	}
	return s
}

// Validate returns every problem of the spec, joined, or nil.
func (s VMSpec) Validate() error {
	s = s.withDefaults()
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if err := ValidateInstanceID(s.ID); err != nil {
		errs = append(errs, err)
	}
	if s.Dir == "" {
		add("dir: required")
	}
	if len(s.APISocket) > maxSocketPath {
		add("API socket path %q: longer than %d bytes", s.APISocket, maxSocketPath)
	}
	if s.VCPUs < 1 || s.VCPUs > MaxVCPUs {
		add("vcpus %d: must be 1..%d", s.VCPUs, MaxVCPUs)
	} else if s.SMT && s.VCPUs != 1 && s.VCPUs%2 != 0 {
		add("vcpus %d: must be 1 or even with SMT", s.VCPUs)
	}
	if s.MemoryMiB <= 0 {
		add("memory %d MiB: must be > 0", s.MemoryMiB)
	}
	if s.Kernel == "" {
		add("kernel: required")
	}
	if len(s.BootArgs) > MaxBootArgs {
		add("boot args: %d bytes, limit %d", len(s.BootArgs), MaxBootArgs)
	}
	driveIDs := map[string]bool{}
	roots := 0
	for i, d := range s.Drives {
		if err := validateResourceID(d.ID); err != nil {
			add("drive %d: %w", i, err)
		} else if driveIDs[d.ID] {
			add("drive %q: duplicate id", d.ID)
		}
		driveIDs[d.ID] = true
		if d.Path == "" {
			add("drive %q: path required", d.ID)
		}
		if d.Root {
			roots++
		}
		if d.PartUUID != "" && !d.Root {
			add("drive %q: partuuid is only used for the root drive", d.ID)
		}
		switch d.CacheType {
		case "", firecracker.CacheUnsafe, firecracker.CacheWriteback:
		default:
			add("drive %q: cache type %q: want Unsafe or Writeback", d.ID, d.CacheType)
		}
		switch d.IOEngine {
		case "", firecracker.IOEngineSync, firecracker.IOEngineAsync:
		default:
			add("drive %q: io engine %q: want Sync or Async", d.ID, d.IOEngine)
		}
		if err := validateRateLimiter(d.RateLimiter); err != nil {
			add("drive %q: %w", d.ID, err)
		}
	}
	if roots > 1 {
		add("drives: %d root drives, at most one allowed", roots)
	}
	nicIDs, macs, taps := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for i, n := range s.NICs {
		if err := validateResourceID(n.ID); err != nil {
			add("network interface %d: %w", i, err)
		} else if nicIDs[n.ID] {
			add("network interface %q: duplicate id", n.ID)
		}
		nicIDs[n.ID] = true
		switch {
		case n.HostDevName == "":
			add("network interface %q: host device name required", n.ID)
		case len(n.HostDevName) > maxTAPName:
			add("network interface %q: host device name %q longer than %d bytes", n.ID, n.HostDevName, maxTAPName)
		case taps[n.HostDevName]:
			add("network interface %q: host device %q used twice", n.ID, n.HostDevName)
		}
		taps[n.HostDevName] = true
		if n.GuestMAC != "" {
			if hw, err := net.ParseMAC(n.GuestMAC); err != nil || len(hw) != 6 || len(n.GuestMAC) != 17 {
				add("network interface %q: guest MAC %q: want xx:xx:xx:xx:xx:xx", n.ID, n.GuestMAC)
			} else if macs[hw.String()] {
				add("network interface %q: guest MAC %s used twice", n.ID, n.GuestMAC)
			} else {
				macs[hw.String()] = true
			}
		}
		if n.MTU != 0 && (n.MTU < 68 || n.MTU > 65535) {
			add("network interface %q: MTU %d: must be 68..65535", n.ID, n.MTU)
		}
		if err := validateRateLimiter(n.RxRateLimiter); err != nil {
			add("network interface %q: rx: %w", n.ID, err)
		}
		if err := validateRateLimiter(n.TxRateLimiter); err != nil {
			add("network interface %q: tx: %w", n.ID, err)
		}
	}
	if v := s.Vsock; v != nil {
		if v.CID < 3 {
			add("vsock: guest CID %d: must be >= 3", v.CID)
		}
		switch {
		case v.UDSPath == "":
			add("vsock: uds path required")
		case len(v.UDSPath) > maxSocketPath:
			add("vsock: uds path %q longer than %d bytes", v.UDSPath, maxSocketPath)
		}
	}
	if s.Logging.Level != "" {
		if err := ValidateLogLevel(s.Logging.Level); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid VM spec: %w", err)
	}
	return nil
}

// validateResourceID checks Firecracker's rule for device ids: non-empty,
// ASCII letters, digits and '_' (no '-').
func validateResourceID(id string) error {
	if id == "" {
		return errors.New("id required")
	}
	for _, c := range []byte(id) {
		if !isAlnum(c) && c != '_' {
			return fmt.Errorf("id %q: only letters, digits and '_' are allowed", id)
		}
	}
	return nil
}

func validateRateLimiter(rl *firecracker.RateLimiter) error {
	if rl == nil {
		return nil
	}
	for name, b := range map[string]*firecracker.TokenBucket{"bandwidth": rl.Bandwidth, "ops": rl.Ops} {
		if b == nil {
			continue
		}
		if b.Size < 0 || b.RefillTime < 0 || (b.OneTimeBurst != nil && *b.OneTimeBurst < 0) {
			return fmt.Errorf("rate limiter %s: negative value", name)
		}
	}
	return nil
}
