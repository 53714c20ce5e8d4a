package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/events"
	"github.com/firecracker-vmm/firecracker-vmm/internal/network"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// Defaults applied by New to zero Config fields. They are the only
// definition of these values: the daemon's configuration file defaults to
// them too. (MaxVCPUs defaults to vmm.MaxVCPUs, Firecracker's limit.)
const (
	DefaultVCPUs        = 1
	DefaultMemoryMiB    = 512
	DefaultBootArgs     = "console=ttyS0 reboot=k panic=1 pci=off"
	DefaultMinMemoryMiB = 128
	DefaultMaxMemoryMiB = 32768
	DefaultMaxSandboxes = 1000
	DefaultStopTimeout  = 10 * time.Second
	DefaultBootTimeout  = 60 * time.Second
)

// Subdirectories of the data directory that kernel, initrd and rootfs
// paths may always resolve into (see AllowedDirs).
const (
	KernelsDir = "kernels"
	ImagesDir  = "images"
)

// AllowedDirs returns the directories that kernel, initrd and rootfs paths
// may resolve into: dataDir/KernelsDir, dataDir/ImagesDir, then each of
// extra, cleaned, in order and without repeats. It does not check that the
// paths are absolute.
func AllowedDirs(dataDir string, extra []string) []string {
	dirs := []string{filepath.Join(dataDir, KernelsDir), filepath.Join(dataDir, ImagesDir)}
	for _, d := range extra {
		if d = filepath.Clean(d); !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// File names inside a sandbox directory.
const (
	SocketName  = vmm.DefaultAPISocketName // firecracker.sock
	LogName     = "firecracker.log"
	MetricsName = "firecracker.metrics"
	ConsoleName = vmm.DefaultConsoleName // console.log
	DiskName    = "rootfs.ext4"
	// VsockName is the vsock device's host socket; Firecracker is given
	// it relative to its working directory (the sandbox directory).
	VsockName = "vsock.sock"
	// SnapshotStateName and SnapshotMemName are a restored sandbox's links
	// to (or copies of) its snapshot's vmstate and memory files.
	SnapshotStateName = "snapshot.vmstate"
	SnapshotMemName   = "snapshot.mem"
	// GuestCID is the vsock context id of every guest.
	GuestCID = 3
	// rootDriveID is the Firecracker drive id of the sandbox's disk.
	rootDriveID = "rootfs"
)

// Config configures a Manager. The daemon builds it from the TOML config.
type Config struct {
	// DataDir is the daemon's data directory (absolute); sandboxes live in
	// DataDir/sandboxes/{id}. Required.
	DataDir string
	// AllowedDirs are extra directories (absolute) that kernel, initrd and
	// rootfs paths may resolve into, after symlinks. DataDir/KernelsDir
	// and DataDir/ImagesDir are always allowed (see AllowedDirs).
	AllowedDirs []string
	// Defaults for CreateRequest fields left zero (DefaultVCPUs,
	// DefaultMemoryMiB and DefaultBootArgs have package defaults; kernel
	// and rootfs have none and must then be given in each request).
	DefaultVCPUs     int
	DefaultMemoryMiB int
	DefaultKernel    string
	DefaultRootfs    string
	DefaultBootArgs  string
	// Limits.
	MaxVCPUs     int // default vmm.MaxVCPUs (Firecracker's maximum)
	MinMemoryMiB int // default DefaultMinMemoryMiB
	MaxMemoryMiB int // default DefaultMaxMemoryMiB
	MaxSandboxes int // default DefaultMaxSandboxes
	// MaxTotalVCPUs and MaxTotalMemoryMiB are the host-wide budget: the
	// most vCPUs and guest memory all live sandboxes (not stopped or
	// failed) may have together; a Create or Restore past either is
	// ResourceExhausted. 0 means no limit (the daemon derives its
	// defaults from the host).
	MaxTotalVCPUs     int
	MaxTotalMemoryMiB int
	// StopTimeout is the default graceful-stop timeout (default
	// DefaultStopTimeout).
	StopTimeout time.Duration
	// BootTimeout bounds a boot, from launching Firecracker to
	// InstanceStart's answer (default DefaultBootTimeout); a boot that
	// takes longer fails.
	BootTimeout time.Duration
	// Launcher starts Firecracker processes (vmm.DirectLauncher or
	// vmm.JailerLauncher). Required. A launcher that implements Jailer
	// puts each sandbox's disk, snapshot files and sockets in its jail.
	Launcher vmm.Launcher
	// Network gives each sandbox its network (internal/network); nil means
	// sandboxes get no NIC (New puts noNetwork in its place).
	Network Networker
	// Events receives every lifecycle event. Required.
	Events *events.Exchange
	// Logger is the structured logger (default slog.Default()).
	Logger *slog.Logger
	// Snapshots is the snapshot catalog (*snapshot.Catalog); nil means
	// there are no snapshots and Checkpoint and Restore answer
	// FailedPrecondition (New puts noSnapshots in its place).
	Snapshots SnapshotCatalog
	// FirecrackerVersion is the installed binary's version (its --version,
	// e.g. "1.16.1"; a leading "Firecracker v" is dropped), recorded in
	// each snapshot's metadata.
	FirecrackerVersion string
	// SnapshotVersion is the installed binary's snapshot data format (its
	// --snapshot-version, e.g. "10.0.0"; a leading "v" is dropped).
	// Required with Snapshots: Restore refuses a snapshot whose format
	// has another major or a greater minor version.
	SnapshotVersion string
	// Store, when set, makes the registry durable: every record change is
	// written to it before the call that made it returns, and Recover
	// reloads it at start.
	Store Store
	// OnShutdown chooses what Shutdown does with the sandboxes:
	// ShutdownStop (the default when Store is nil) stops and removes
	// them; ShutdownLeave leaves their VMMs running for the next daemon
	// to re-adopt (it requires a Store).
	OnShutdown ShutdownMode
	// CrashPoint, when set, is called at each named step of the
	// lifecycle (CrashPoints). Tests use it to kill the daemon there; it
	// must not block for long.
	CrashPoint func(point string)
}

// ShutdownMode is what Manager.Shutdown does with the sandboxes.
type ShutdownMode string

// The shutdown modes.
const (
	// ShutdownStop stops and removes every sandbox.
	ShutdownStop ShutdownMode = "stop"
	// ShutdownLeave leaves every VMM running and every record in the
	// store.
	ShutdownLeave ShutdownMode = "leave"
)

// Networker gives sandboxes their network. It is implemented by
// *network.Manager; without networking the manager uses noNetwork.
type Networker interface {
	// Attach builds the sandbox's network; on failure nothing is left.
	Attach(ctx context.Context, sandboxID string) (network.Attachment, error)
	// Detach removes it and releases the lease; it is idempotent.
	Detach(ctx context.Context, sandboxID string) error
	// Reserve takes back the address lease a sandbox held before a
	// restart; an address that is taken or outside the pool is an error.
	Reserve(sandboxID string, ip netip.Addr) error
	// ListNetns lists the ids of the sandbox namespaces found on the host.
	ListNetns() ([]string, error)
	// Verify checks, for a VMM re-adopted after a restart, the network of
	// the sandbox holding ip (namespace, veth, TAP) and repairs what can
	// be rebuilt; an error says the sandbox's network is lost.
	Verify(ctx context.Context, sandboxID string, ip netip.Addr) error
}

var _ Networker = (*network.Manager)(nil)

// withDefaults validates cfg and fills in the defaults.
func (cfg Config) withDefaults() (Config, error) {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if cfg.DataDir == "" || !filepath.IsAbs(cfg.DataDir) {
		add("data dir %q: an absolute path is required", cfg.DataDir)
	}
	cfg.DataDir = filepath.Clean(cfg.DataDir)
	for _, d := range cfg.AllowedDirs {
		if !filepath.IsAbs(d) {
			add("allowed dir %q: must be absolute", d)
		}
	}
	cfg.AllowedDirs = AllowedDirs(cfg.DataDir, cfg.AllowedDirs)
	setDefault(&cfg.DefaultVCPUs, DefaultVCPUs)
	setDefault(&cfg.DefaultMemoryMiB, DefaultMemoryMiB)
	setDefault(&cfg.MaxVCPUs, vmm.MaxVCPUs)
	setDefault(&cfg.MinMemoryMiB, DefaultMinMemoryMiB)
	setDefault(&cfg.MaxMemoryMiB, DefaultMaxMemoryMiB)
	setDefault(&cfg.MaxSandboxes, DefaultMaxSandboxes)
	setDefault(&cfg.StopTimeout, DefaultStopTimeout)
	setDefault(&cfg.BootTimeout, DefaultBootTimeout)
	if cfg.DefaultBootArgs == "" {
		cfg.DefaultBootArgs = DefaultBootArgs
	}
	if cfg.MaxVCPUs < 1 || cfg.MaxVCPUs > vmm.MaxVCPUs {
		add("max vcpus %d: must be between 1 and %d", cfg.MaxVCPUs, vmm.MaxVCPUs)
	}
	if cfg.MinMemoryMiB < 1 || cfg.MinMemoryMiB > cfg.MaxMemoryMiB {
		add("memory limits %d..%d MiB: need 1 <= min <= max", cfg.MinMemoryMiB, cfg.MaxMemoryMiB)
	}
	if cfg.DefaultVCPUs < 1 || cfg.DefaultVCPUs > cfg.MaxVCPUs {
		add("default vcpus %d: must be between 1 and %d", cfg.DefaultVCPUs, cfg.MaxVCPUs)
	}
	if cfg.DefaultMemoryMiB < cfg.MinMemoryMiB || cfg.DefaultMemoryMiB > cfg.MaxMemoryMiB {
		add("default memory %d MiB: must be between %d and %d", cfg.DefaultMemoryMiB, cfg.MinMemoryMiB, cfg.MaxMemoryMiB)
	}
	if err := checkBootArgs(cfg.DefaultBootArgs); err != nil {
		add("default boot args: %v", errors.Unwrap(err))
	}
	if cfg.MaxTotalVCPUs < 0 || cfg.MaxTotalMemoryMiB < 0 {
		add("host budget %d vCPUs, %d MiB: must not be negative (0: no limit)", cfg.MaxTotalVCPUs, cfg.MaxTotalMemoryMiB)
	}
	if cfg.MaxSandboxes < 1 {
		add("max sandboxes %d: must be positive", cfg.MaxSandboxes)
	}
	if cfg.StopTimeout < 0 || cfg.BootTimeout < 0 {
		add("stop and boot timeouts must not be negative")
	}
	if cfg.Events == nil {
		add("an event exchange is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	switch cfg.OnShutdown {
	case "":
		cfg.OnShutdown = ShutdownStop
	case ShutdownStop:
	case ShutdownLeave:
		if cfg.Store == nil {
			add("on shutdown %q needs a store to re-adopt the sandboxes from", cfg.OnShutdown)
		}
	default:
		add("on shutdown %q: want %q or %q", cfg.OnShutdown, ShutdownLeave, ShutdownStop)
	}
	cfg.SnapshotVersion = strings.TrimPrefix(strings.TrimSpace(cfg.SnapshotVersion), "v")
	cfg.FirecrackerVersion = strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(cfg.FirecrackerVersion), "Firecracker "), "v")
	if cfg.Snapshots != nil {
		if _, _, err := parseFormatVersion(cfg.SnapshotVersion); err != nil {
			add("snapshot version %q (the binary's --snapshot-version): %v", cfg.SnapshotVersion, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return cfg, fmt.Errorf("sandbox manager config: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	// The collaborators a daemon can go without get their null versions.
	if cfg.Network == nil {
		cfg.Network = noNetwork{}
	}
	if cfg.Snapshots == nil {
		cfg.Snapshots = noSnapshots{}
	}
	if cfg.Store == nil {
		cfg.Store = noStore{}
	}
	return cfg, nil
}

func setDefault[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}
