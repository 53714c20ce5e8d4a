package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/disk"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/events"
	"github.com/firecracker-vmm/firecracker-vmm/internal/ids"
	"github.com/firecracker-vmm/firecracker-vmm/internal/network"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// Defaults applied by New to zero Config fields.
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
	// rootfs paths may resolve into, after symlinks. DataDir/kernels and
	// DataDir/images are always allowed.
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
	MaxVCPUs     int // default 32 (Firecracker's maximum)
	MinMemoryMiB int // default 128
	MaxMemoryMiB int // default 32768
	MaxSandboxes int // default 1000
	// StopTimeout is the default graceful-stop timeout (default 10 s).
	StopTimeout time.Duration
	// BootTimeout bounds a boot, from launching Firecracker to
	// InstanceStart's answer (default 60 s); a boot that takes longer
	// fails.
	BootTimeout time.Duration
	// Launcher starts Firecracker processes (vmm.DirectLauncher or
	// vmm.JailerLauncher). Required. A launcher that implements Jailer
	// puts each sandbox's disk, snapshot files and sockets in its jail.
	Launcher vmm.Launcher
	// Network gives each sandbox its network (internal/network); nil means
	// sandboxes get no NIC.
	Network Networker
	// Events receives every lifecycle event. Required.
	Events *events.Exchange
	// Logger is the structured logger (default slog.Default()).
	Logger *slog.Logger
	// Snapshots is the snapshot catalog (*snapshot.Catalog); nil means
	// Checkpoint and Restore answer FailedPrecondition.
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
// *network.Manager.
type Networker interface {
	// Attach builds the sandbox's network; on failure nothing is left.
	Attach(ctx context.Context, sandboxID string) (network.Attachment, error)
	// Detach removes it and releases the lease; it is idempotent.
	Detach(ctx context.Context, sandboxID string) error
}

// withDefaults validates cfg and fills in the defaults.
func (cfg Config) withDefaults() (Config, error) {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if cfg.DataDir == "" || !filepath.IsAbs(cfg.DataDir) {
		add("data dir %q: an absolute path is required", cfg.DataDir)
	}
	cfg.DataDir = filepath.Clean(cfg.DataDir)
	dirs := []string{filepath.Join(cfg.DataDir, "kernels"), filepath.Join(cfg.DataDir, "images")}
	for _, d := range cfg.AllowedDirs {
		if !filepath.IsAbs(d) {
			add("allowed dir %q: must be absolute", d)
			continue
		}
		if d = filepath.Clean(d); !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	cfg.AllowedDirs = dirs
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
	return cfg, nil
}

func setDefault[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

// Manager owns the registry of sandboxes and their lifecycle. Its methods
// are safe for concurrent use.
type Manager struct {
	cfg          Config
	rt           runtime
	events       *events.Exchange
	log          *slog.Logger
	ids          *ids.Generator
	now          func() time.Time
	sandboxesDir string
	// cloneDisk copies a disk image or snapshot file (cloneNoSync; tests
	// inject failures).
	cloneDisk func(ctx context.Context, src, dst string) error
	// jailer is Config.Launcher when it jails VMMs, else nil.
	jailer Jailer

	// baseCtx parents every background goroutine's context; it is
	// cancelled at the end of Shutdown.
	baseCtx    context.Context
	baseCancel context.CancelFunc
	// shutdownDone is closed when Shutdown has finished.
	shutdownDone chan struct{}

	// wg tracks every background goroutine. Add is only called with mu
	// held while closing is false, or from a tracked goroutine.
	wg sync.WaitGroup

	// mu guards the fields that follow. It is held only briefly.
	mu        sync.Mutex
	sandboxes map[string]*instance
	reserved  int // creates past validation, not yet registered
	closing   bool
}

// instance is the manager's record of one sandbox.
type instance struct {
	id string
	// op serializes operations on this sandbox (Stop, Remove, Checkpoint,
	// expiry): a one-slot semaphore, so that waiting for it honours a context.
	op chan struct{}
	// cancel ends the background goroutine (boot, then watch); done is
	// closed when it has returned.
	cancel context.CancelFunc
	done   chan struct{}
	log    *slog.Logger
	// limits are the VMM's resource limits (its vCPUs and memory), which
	// name its cgroups under the jailer. Immutable.
	limits vmm.Limits

	// mu guards the fields that follow; never held across blocking calls.
	mu      sync.Mutex
	rec     Sandbox
	vm      machine     // nil when no VMM runs (or before READY)
	ttl     *time.Timer // nil without TTL
	removed bool
	// removing is set (and stored) once a removal has stopped the VMM and
	// begins releasing the sandbox's resources; Recover finishes it.
	removing bool
	// pidStart is the VMM's process start time (vmm.ProcessStartTime),
	// 0 when no VMM runs or it is unknown.
	pidStart uint64
}

// lock takes the operation lock or fails when ctx ends first.
func (inst *instance) lock(ctx context.Context) error {
	select {
	case inst.op <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("sandbox %s: waiting for a concurrent operation: %w", inst.id, ctx.Err())
	}
}

func (inst *instance) unlock() { <-inst.op }

// snapshot returns a deep copy of the record. inst.mu must be held.
func (inst *instance) snapshotLocked() Sandbox {
	s := inst.rec
	s.Labels = maps.Clone(s.Labels)
	s.Network.DNS = slices.Clone(s.Network.DNS)
	return s
}

// New validates cfg and returns a Manager. The sandboxes directory is
// created on the first Create.
func New(cfg Config) (*Manager, error) {
	if cfg.Launcher == nil {
		return nil, fmt.Errorf("sandbox manager config: a launcher is required: %w", errdefs.ErrInvalidArgument)
	}
	return newManager(cfg, vmmRuntime{launcher: cfg.Launcher})
}

// newManager is New with the runtime given (tests pass a fake).
func newManager(cfg Config, rt runtime) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	jailer, _ := cfg.Launcher.(Jailer)
	return &Manager{
		jailer:       jailer,
		cfg:          cfg,
		rt:           rt,
		events:       cfg.Events,
		log:          cfg.Logger,
		ids:          ids.NewGenerator(nil),
		now:          time.Now,
		sandboxesDir: filepath.Join(cfg.DataDir, "sandboxes"),
		cloneDisk:    cloneNoSync,
		baseCtx:      ctx,
		baseCancel:   cancel,
		shutdownDone: make(chan struct{}),
		sandboxes:    map[string]*instance{},
	}, nil
}

// cloneNoSync copies a file without syncing it: the manager's copies are a
// sandbox's own files, which die with its VM, or files of a pending
// snapshot, which the catalog syncs when it commits. (Skipping the fsync
// also keeps it out of a checkpoint's pause.)
func cloneNoSync(ctx context.Context, src, dst string) error {
	_, err := disk.CloneWith(ctx, src, dst, disk.Options{NoSync: true})
	return err
}

// SandboxesDir returns data_dir/sandboxes.
func (m *Manager) SandboxesDir() string { return m.sandboxesDir }

// AllowedDirs returns the directories request paths may resolve into.
func (m *Manager) AllowedDirs() []string { return slices.Clone(m.cfg.AllowedDirs) }

// errShuttingDown is returned by Create once Shutdown has begun.
func errShuttingDown() error {
	return fmt.Errorf("the sandbox manager is shutting down: %w", errdefs.ErrUnavailable)
}

// Create validates req, registers a sandbox in StateStarting, prepares its
// directory and disk copy, and boots it in the background. It returns at
// once.
func (m *Manager) Create(ctx context.Context, req CreateRequest) (_ Sandbox, err error) {
	if err := ctx.Err(); err != nil {
		return Sandbox{}, fmt.Errorf("create: %w", err)
	}
	if m.isClosing() {
		return Sandbox{}, errShuttingDown()
	}
	p, err := m.validate(req)
	if err != nil {
		return Sandbox{}, fmt.Errorf("create: %w", err)
	}
	defer p.rootfsFile.Close()

	slot, err := m.claimSlot("create")
	if err != nil {
		return Sandbox{}, err
	}
	registered := false
	defer func() { slot.release(registered) }()
	id, dir, log := slot.id, slot.dir, slot.log
	m.crash(CrashCreateDir)
	proc := Process{
		APISocket:   filepath.Join(dir, SocketName),
		LogPath:     filepath.Join(dir, LogName),
		MetricsPath: filepath.Join(dir, MetricsName),
		ConsolePath: filepath.Join(dir, ConsoleName),
		VsockPath:   filepath.Join(dir, VsockName),
	}
	diskPath := filepath.Join(dir, DiskName)
	var jail vmm.Jail
	if m.jailer != nil {
		// The disk is cloned straight into the chroot.
		if jail, err = slot.prepareJail(vmm.Limits{VCPUs: p.vcpus, MemoryMiB: p.memoryMiB}, &proc); err != nil {
			return Sandbox{}, err
		}
		diskPath = jail.HostPath(DiskName)
	}
	method, err := disk.CloneFile(ctx, p.rootfsFile, diskPath, disk.Options{NoSync: true})
	if err != nil {
		if ctx.Err() != nil {
			return Sandbox{}, fmt.Errorf("create: copying the rootfs: %w", ctx.Err())
		}
		return Sandbox{}, fmt.Errorf("create: copying the rootfs: %w", err)
	}
	if m.jailer != nil {
		if err := ownByJail(jail, diskPath); err != nil {
			return Sandbox{}, fmt.Errorf("create: giving the disk to the jail: %w", err)
		}
	}
	log.Debug("rootfs copied", "source", p.rootfs, "disk", diskPath, "method", string(method))
	m.crash(CrashCreateDisk)

	var att network.Attachment
	if m.cfg.Network != nil {
		if att, err = slot.attachNetwork(ctx); err != nil {
			return Sandbox{}, err
		}
		m.crash(CrashCreateNetwork)
	}

	rec := slot.record(p.labels, Hardware{
		VCPUs: p.vcpus, MemoryMiB: p.memoryMiB,
		Kernel: p.kernel, Initrd: p.initrd, Rootfs: p.rootfs, Disk: diskPath,
		BootArgs: p.bootArgs, TrackDirtyPages: p.trackDirtyPages,
	}, proc, p.ttl)
	spec := vmm.VMSpec{
		ID: id, Dir: dir, APISocket: rec.Process.APISocket, ConsolePath: rec.Process.ConsolePath,
		VCPUs: p.vcpus, MemoryMiB: p.memoryMiB, TrackDirtyPages: p.trackDirtyPages,
		Kernel: p.kernel, Initrd: p.initrd, BootArgs: p.bootArgs,
		// The drive and the vsock socket are relative to the VMM's working
		// directory (dir, or the jail's root), so that a snapshot of this
		// VM loads in another sandbox's directory, against that sandbox's
		// own files.
		Drives:  []vmm.DriveSpec{{ID: rootDriveID, Path: DiskName, Root: true}},
		Vsock:   &vmm.VsockSpec{CID: GuestCID, UDSPath: VsockName},
		Logging: vmm.LoggingSpec{LogPath: rec.Process.LogPath, MetricsPath: rec.Process.MetricsPath},
	}
	if m.cfg.Network != nil {
		rec.Network = networkOf(att)
		spec.NICs = []vmm.NICSpec{{ID: network.NICID, HostDevName: att.TAP, GuestMAC: att.GuestMAC}}
		spec.BootArgs = strings.TrimSpace(p.bootArgs + " " + att.BootArg)
		spec.NetNS = att.NetnsPath
		rec.Hardware.BootArgs = spec.BootArgs
	}
	inst := newInstance(rec, log, vmm.Limits{VCPUs: p.vcpus, MemoryMiB: p.memoryMiB})
	attrs := map[string]string{"vcpus": strconv.Itoa(p.vcpus), "memory_mib": strconv.Itoa(p.memoryMiB)}
	out, registered, err := m.startNew(ctx, inst, ActionCreated, "boot", attrs, CrashCreateRecorded,
		func(ctx context.Context) (machine, error) { return m.rt.Start(ctx, spec) })
	if err != nil {
		return Sandbox{}, fmt.Errorf("create: %w", err)
	}
	log.Info("sandbox created", "vcpus", p.vcpus, "memory_mib", p.memoryMiB, "kernel", p.kernel,
		"rootfs", p.rootfs, "disk_method", string(method), "ttl", p.ttl)
	return out, nil
}

// newInstance returns the instance of a new sandbox in rec.State.
func newInstance(rec Sandbox, log *slog.Logger, limits vmm.Limits) *instance {
	return &instance{id: rec.ID, op: make(chan struct{}, 1), cancel: func() {}, done: make(chan struct{}), log: log,
		rec: rec, limits: limits}
}

// startNew registers a prepared sandbox (slot, directory, disk, jail and
// network in place; inst starting), publishes action (created or
// restored), starts the VMM in the background with start (what names it)
// and writes the sandbox's record and lease. The boot runs while the
// record is fsync'd instead of after it, and startNew still returns only
// once the record is durable; until then it holds the sandbox's operation
// lock and inst.mu, so a Stop or Remove, and the boot's own ready, wait
// for the record. A daemon that dies before the record is durable leaves a
// VMM and a directory that Recover removes; after it, one that Recover
// adopts or fails (crash point recorded).
//
// registered tells the caller whether the registry took the sandbox over:
// if not, the caller releases what it prepared; if so and the record could
// not be written, startNew has removed the sandbox again (boot cancelled,
// everything released) and returns the error.
func (m *Manager) startNew(ctx context.Context, inst *instance, action, what string, attrs map[string]string,
	recorded string, start startFunc) (_ Sandbox, registered bool, _ error) {
	runCtx, cancel := context.WithCancel(m.baseCtx)
	inst.cancel = cancel
	inst.op <- struct{}{} // free: nobody else knows the sandbox yet
	defer inst.unlock()
	inst.mu.Lock()
	if err := m.register(inst); err != nil {
		inst.mu.Unlock()
		cancel()
		return Sandbox{}, false, err
	}
	if ttl := inst.rec.TTL; ttl > 0 {
		attrs["ttl"] = ttl.String()
	}
	m.publishLocked(inst, action, attrs)
	go m.run(runCtx, inst, what, start)
	if err := m.persistNewLocked(ctx, inst); err != nil {
		inst.mu.Unlock()
		inst.log.Error("the new sandbox's record could not be written; removing it", "error", err)
		if rerr := m.removeLocked(context.WithoutCancel(ctx), inst, true, "its record could not be written"); rerr != nil {
			inst.log.Error("removing a sandbox whose record could not be written", "error", rerr)
		}
		return Sandbox{}, true, err
	}
	m.crash(recorded)
	if ttl := inst.rec.TTL; ttl > 0 {
		id := inst.id
		inst.ttl = time.AfterFunc(ttl, func() { m.expire(id) })
	}
	out := inst.snapshotLocked()
	inst.mu.Unlock()
	return out, true, nil
}

// startFunc starts a sandbox's VMM: a boot or a snapshot restore.
type startFunc func(ctx context.Context) (machine, error)

// isClosing reports whether Shutdown has begun.
func (m *Manager) isClosing() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closing
}

// slot is a sandbox being created: a place under the sandbox cap, an id, a
// fresh directory and, as they are prepared, its jail and network. Until
// the registry takes the sandbox over, release undoes all of them.
type slot struct {
	m   *Manager
	op  string // "create" or "restore", in errors
	id  string
	dir string
	log *slog.Logger
	// jailLimits is set once a jail was (being) prepared; networked once
	// the network is attached.
	jailLimits *vmm.Limits
	networked  bool
}

// claimSlot reserves a place under the cap, picks an id and creates the
// sandbox directory; op names the operation in errors. The caller must
// call release once.
func (m *Manager) claimSlot(op string) (*slot, error) {
	if err := m.reserve(); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	s := &slot{m: m, op: op, id: m.ids.New()}
	s.log = m.log.With("sandbox", s.id)
	s.dir = filepath.Join(m.sandboxesDir, s.id)
	if err := os.MkdirAll(m.sandboxesDir, 0o700); err != nil {
		m.unreserve()
		return nil, fmt.Errorf("%s: preparing %s: %w", op, m.sandboxesDir, err)
	}
	if err := os.Mkdir(s.dir, 0o700); err != nil {
		m.unreserve()
		return nil, fmt.Errorf("%s: sandbox directory: %w", op, err)
	}
	return s, nil
}

// prepareJail creates the sandbox's chroot and fills in proc for it (see
// Manager.prepareJail).
func (s *slot) prepareJail(limits vmm.Limits, proc *Process) (vmm.Jail, error) {
	s.jailLimits = &limits
	j, err := s.m.prepareJail(s.id, limits, proc)
	if err != nil {
		return vmm.Jail{}, fmt.Errorf("%s: preparing the jail: %w", s.op, err)
	}
	return j, nil
}

// record returns the new sandbox's record in StateStarting, created now,
// with its TTL deadline.
func (s *slot) record(labels map[string]string, hw Hardware, proc Process, ttl time.Duration) Sandbox {
	if labels == nil {
		labels = map[string]string{}
	}
	now := s.m.now()
	rec := Sandbox{ID: s.id, Labels: labels, State: StateStarting, Hardware: hw, Process: proc, Dir: s.dir,
		CreatedAt: now, TTL: ttl}
	if ttl > 0 {
		rec.ExpiresAt = now.Add(ttl)
	}
	return rec
}

// attachNetwork gives the sandbox its network.
func (s *slot) attachNetwork(ctx context.Context) (network.Attachment, error) {
	att, err := s.m.cfg.Network.Attach(ctx, s.id)
	if err != nil {
		return att, fmt.Errorf("%s: network: %w", s.op, err)
	}
	s.networked = true
	return att, nil
}

// release undoes claimSlot, prepareJail and attachNetwork unless the
// sandbox was registered (the registry then owns all of it).
func (s *slot) release(registered bool) {
	if registered {
		return
	}
	if s.networked {
		if err := s.m.cfg.Network.Detach(context.Background(), s.id); err != nil {
			s.log.Error("releasing the network of a failed "+s.op, "error", err)
		}
	}
	if s.jailLimits != nil {
		if err := s.m.jailer.Cleanup(s.id, *s.jailLimits); err != nil {
			s.log.Error("removing the jail of a failed "+s.op, "error", err)
		}
	}
	_ = os.RemoveAll(s.dir)
	s.m.unreserve()
}

// reserve takes a slot under the sandbox cap, so that concurrent creates
// and restores cannot pass it. The slot is given back with unreserve or
// turned into a registration by register.
func (m *Manager) reserve() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.closing:
		return errShuttingDown()
	case len(m.sandboxes)+m.reserved >= m.cfg.MaxSandboxes:
		return fmt.Errorf("the limit of %d sandboxes is reached; remove some first: %w",
			m.cfg.MaxSandboxes, errdefs.ErrResourceExhausted)
	}
	m.reserved++
	return nil
}

// unreserve gives back a slot taken by reserve.
func (m *Manager) unreserve() {
	m.mu.Lock()
	m.reserved--
	m.mu.Unlock()
}

// register adds inst, which holds a reserved slot, to the registry and
// accounts for its background goroutine, which the caller must start. It
// fails (the slot still reserved) once Shutdown has begun.
func (m *Manager) register(inst *instance) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closing {
		return errShuttingDown()
	}
	m.reserved--
	m.sandboxes[inst.id] = inst
	m.wg.Add(1)
	return nil
}

// run is a sandbox's background goroutine: it starts the VMM with start
// (what names it: "boot" or "restore") and then watches it until it exits
// or ctx is cancelled (by Stop or Remove, which then own the VMM).
func (m *Manager) run(ctx context.Context, inst *instance, what string, start startFunc) {
	defer m.wg.Done()
	defer close(inst.done)
	mach, ok := m.boot(ctx, inst, what, start)
	if !ok {
		return
	}
	m.watch(ctx, inst, mach)
}

// watch waits for a running VMM to exit on its own and records the exit
// (stopped or failed, with an event), or returns when ctx is cancelled (by
// Stop or Remove, which then own the VMM).
func (m *Manager) watch(ctx context.Context, inst *instance, mach machine) {
	select {
	case <-mach.Done():
	case <-ctx.Done():
		return
	}
	inst.mu.Lock()
	defer inst.mu.Unlock()
	if s := inst.rec.State; s != StateReady && s != StateRunning {
		return // a stop is in progress and handles the exit
	}
	// The process has ended: Wait only collects the status and removes
	// the sockets.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	st, err := mach.Wait(wctx)
	cancel()
	inst.vm = nil
	inst.rec.Process.PID = 0
	inst.rec.StoppedAt = m.now()
	attrs := exitAttrs(st)
	// A re-adopted VMM has no launcher cleanup attached: remove its jail
	// here (idempotent for a VMM whose own cleanup already did).
	if err := m.releaseJail(inst.id, inst.limits); err != nil {
		attrs["error"] = err.Error()
	}
	to := StateFailed
	switch {
	case err != nil:
		inst.rec.FailureReason = fmt.Sprintf("the VMM exited unexpectedly (%v)", err)
	case st.Known && st.Signal == 0 && st.Code == 0:
		to = StateStopped
		inst.rec.FailureReason = "the VMM exited on its own with exit status 0 (the guest shut down)"
	default:
		inst.rec.FailureReason = fmt.Sprintf("the VMM exited unexpectedly (%s)", st)
	}
	attrs["reason"] = inst.rec.FailureReason
	m.transitionLocked(inst, to, ActionExited, attrs)
	inst.log.Warn("VMM exited on its own", "status", st.String(), "state", string(to))
}

// boot starts the VMM (a boot or a restore, named by what) and records the
// outcome: READY (ok true, the machine returned for watching) or FAILED.
// When a Stop or Remove took the sandbox over meanwhile, the machine (if
// any) is handed to it.
func (m *Manager) boot(ctx context.Context, inst *instance, what string, startVM startFunc) (machine, bool) {
	bctx, cancel := context.WithTimeout(ctx, m.cfg.BootTimeout)
	defer cancel()
	start := m.now()
	mach, err := startVM(bctx)
	if err == nil {
		m.crash(what + ".started")
	}
	var jailErr error
	if err != nil {
		// Nothing runs: the jail goes (a failed launch removed it already).
		jailErr = m.releaseJail(inst.id, inst.limits)
	}
	inst.mu.Lock()
	defer inst.mu.Unlock()
	if inst.rec.State != StateStarting {
		inst.vm = mach // may be nil; the stop in progress deals with it
		return nil, false
	}
	if err != nil {
		reason := err.Error()
		if errors.Is(bctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
			reason = fmt.Sprintf("%s did not finish within %v: %v", what, m.cfg.BootTimeout, err)
		}
		if jailErr != nil {
			reason = fmt.Sprintf("%s (and %v)", reason, jailErr)
		}
		inst.rec.FailureReason = reason
		inst.rec.StoppedAt = m.now()
		m.transitionLocked(inst, StateFailed, ActionFailed, map[string]string{"reason": reason})
		inst.log.Error(what+" failed", "error", reason)
		return nil, false
	}
	inst.vm = mach
	inst.rec.ReadyAt = m.now()
	inst.rec.Process.PID = mach.Pid()
	inst.pidStart = 0
	if t, err := vmm.ProcessStartTime(mach.Pid()); err == nil {
		inst.pidStart = t
	}
	m.transitionLocked(inst, StateReady, ActionReady, map[string]string{
		"pid": strconv.Itoa(mach.Pid()), what + "_ms": strconv.FormatInt(inst.rec.ReadyAt.Sub(start).Milliseconds(), 10),
	})
	inst.log.Info("sandbox ready", "pid", mach.Pid(), what+"_time", inst.rec.ReadyAt.Sub(start))
	return mach, true
}

// networkOf converts an attachment into the record's network identity.
func networkOf(a network.Attachment) Network {
	dns := make([]string, 0, len(a.DNS))
	for _, d := range a.DNS {
		dns = append(dns, d.String())
	}
	return Network{
		TAP: a.TAP, MAC: a.GuestMAC, IP: a.IP.String(), Gateway: a.Gateway.String(), DNS: dns,
		Netns: a.Netns, GuestIP: a.GuestIP.String(), PrefixLen: a.PrefixLen,
	}
}

// exitAttrs describes an exit status as event attributes.
func exitAttrs(st vmm.ExitStatus) map[string]string {
	a := map[string]string{"exit_status": st.String()}
	if st.Known {
		if st.Signal != 0 {
			a["signal"] = st.Signal.String()
		} else {
			a["exit_code"] = strconv.Itoa(st.Code)
		}
	}
	return a
}

// publishLocked publishes an event about inst in its current state.
// inst.mu must be held, which keeps each sandbox's events in order.
//
// The record is written after the event is handed to the exchange but
// before inst.mu is released: an RPC that made the change still returns
// only once it is durable, writes of one sandbox stay in order, and a
// subscriber waiting for a background change (a boot's ready) does not
// wait for the fsync. A daemon that dies in between loses no state Recover
// cannot rebuild: a ready VMM whose record still says starting is found by
// its directory and re-adopted.
func (m *Manager) publishLocked(inst *instance, action string, attrs map[string]string) {
	m.events.Publish(events.Event{
		SandboxID: inst.id, Action: action, State: string(inst.rec.State), Time: m.now(), Attributes: attrs,
	})
	if action != ActionCreated && action != ActionRestored {
		// A new sandbox's record was written before it was registered.
		m.persistLocked(inst)
	}
}

// transitionLocked moves inst to state to and publishes action. A move the
// state machine forbids is a bug: it is logged and refused. inst.mu must
// be held.
func (m *Manager) transitionLocked(inst *instance, to State, action string, attrs map[string]string) bool {
	from := inst.rec.State
	if !allowed(from, to) {
		inst.log.Error("refused state transition (bug)", "from", string(from), "to", string(to), "action", action)
		return false
	}
	inst.rec.State = to
	m.publishLocked(inst, action, attrs)
	inst.log.Debug("state changed", "from", string(from), "to", string(to), "action", action)
	return true
}

// lookup validates id and finds its sandbox.
func (m *Manager) lookup(id string) (*instance, error) {
	if !ValidID(id) {
		shown := id
		if len(shown) > 40 {
			shown = shown[:40] + "..."
		}
		return nil, fmt.Errorf("sandbox id %s: must be %d characters of 0-9 and a-z (without i, l, o, u): %w",
			strconv.QuoteToASCII(shown), ids.Length, errdefs.ErrInvalidArgument)
	}
	m.mu.Lock()
	inst := m.sandboxes[id]
	m.mu.Unlock()
	if inst == nil {
		return nil, notFound(id)
	}
	return inst, nil
}

func notFound(id string) error { return fmt.Errorf("sandbox %s: %w", id, errdefs.ErrNotFound) }

// lockLive finds id and takes its operation lock; the sandbox is still
// registered when it returns nil. The caller unlocks.
func (m *Manager) lockLive(ctx context.Context, id string) (*instance, error) {
	inst, err := m.lookup(id)
	if err != nil {
		return nil, err
	}
	if err := inst.lock(ctx); err != nil {
		return nil, err
	}
	inst.mu.Lock()
	removed := inst.removed
	inst.mu.Unlock()
	if removed {
		inst.unlock()
		return nil, notFound(id)
	}
	return inst, nil
}

// Get returns one sandbox.
func (m *Manager) Get(ctx context.Context, id string) (Sandbox, error) {
	inst, err := m.lookup(id)
	if err != nil {
		return Sandbox{}, err
	}
	inst.mu.Lock()
	defer inst.mu.Unlock()
	if inst.removed {
		return Sandbox{}, notFound(id)
	}
	return inst.snapshotLocked(), nil
}

// List returns the sandboxes that match f, ordered by id.
func (m *Manager) List(ctx context.Context, f ListFilter) ([]Sandbox, error) {
	for _, s := range f.States {
		if !s.Valid() {
			return nil, fmt.Errorf("state filter %s: want one of %v: %w",
				strconv.QuoteToASCII(string(s)), States, errdefs.ErrInvalidArgument)
		}
	}
	m.mu.Lock()
	insts := slices.Collect(maps.Values(m.sandboxes))
	m.mu.Unlock()
	out := make([]Sandbox, 0, len(insts))
	for _, inst := range insts {
		inst.mu.Lock()
		ok := !inst.removed && matches(f, &inst.rec)
		var s Sandbox
		if ok {
			s = inst.snapshotLocked()
		}
		inst.mu.Unlock()
		if ok {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b Sandbox) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// matches reports whether s passes f.
func matches(f ListFilter, s *Sandbox) bool {
	if len(f.States) > 0 && !slices.Contains(f.States, s.State) {
		return false
	}
	for k, v := range f.Labels {
		if got, ok := s.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Stop stops a sandbox gracefully within timeout (0: Config.StopTimeout),
// then forcibly, and returns it in StateStopped. A sandbox that is still
// starting has its boot cancelled. Stopping a stopped or failed sandbox is
// a FailedPrecondition.
func (m *Manager) Stop(ctx context.Context, id string, timeout time.Duration) (Sandbox, error) {
	if timeout < 0 {
		return Sandbox{}, fmt.Errorf("stop timeout %v: must not be negative: %w", timeout, errdefs.ErrInvalidArgument)
	}
	if timeout == 0 {
		timeout = m.cfg.StopTimeout
	}
	inst, err := m.lockLive(ctx, id)
	if err != nil {
		return Sandbox{}, err
	}
	defer inst.unlock()
	if err := m.stopLocked(ctx, inst, timeout, false, "stop requested"); err != nil {
		return Sandbox{}, err
	}
	inst.mu.Lock()
	defer inst.mu.Unlock()
	return inst.snapshotLocked(), nil
}

// stopLocked moves a live sandbox through STOPPING to STOPPED: it cancels
// the boot or the watcher, then shuts the VMM down (SendCtrlAltDel, wait up
// to timeout, SIGKILL) or, with force, kills it at once. The caller holds
// the operation lock. The stop always completes: when ctx ends the VMM is
// killed rather than left running.
func (m *Manager) stopLocked(ctx context.Context, inst *instance, timeout time.Duration, force bool, reason string) error {
	inst.mu.Lock()
	from := inst.rec.State
	switch from {
	case StateStopped:
		inst.mu.Unlock()
		return fmt.Errorf("sandbox %s is already stopped: %w", inst.id, errdefs.ErrFailedPrecondition)
	case StateFailed:
		inst.mu.Unlock()
		return fmt.Errorf("sandbox %s has failed and is not running (remove it): %w", inst.id, errdefs.ErrFailedPrecondition)
	}
	if !m.transitionLocked(inst, StateStopping, ActionStopping, map[string]string{"reason": reason}) {
		inst.mu.Unlock()
		return fmt.Errorf("sandbox %s: cannot stop in state %s: %w", inst.id, from, errdefs.ErrFailedPrecondition)
	}
	inst.mu.Unlock()
	inst.log.Info("stopping sandbox", "from", string(from), "timeout", timeout, "force", force, "reason", reason)
	m.crash(CrashStopStopping)

	// End the background goroutine: a boot is cancelled (vmm.Start kills
	// and reaps a half-started VMM); a watcher returns. Either way this
	// stop then owns the VMM, if there is one.
	inst.cancel()
	<-inst.done
	inst.mu.Lock()
	mach := inst.vm
	inst.mu.Unlock()

	attrs := map[string]string{"reason": reason}
	if mach != nil {
		var st vmm.ExitStatus
		var err error
		if force {
			st, err = mach.Kill(ctx)
		} else {
			sctx, cancel := context.WithTimeout(ctx, timeout)
			st, err = mach.Shutdown(sctx)
			cancel()
		}
		maps.Copy(attrs, exitAttrs(st))
		forced := force || (st.Known && st.Signal == syscall.SIGKILL)
		attrs["forced"] = strconv.FormatBool(forced)
		if err != nil {
			attrs["error"] = err.Error()
			inst.log.Error("stopping the VMM", "error", err)
		}
		inst.log.Info("VMM stopped", "status", st.String(), "forced", forced)
	} else if from == StateStarting {
		attrs["boot_cancelled"] = "true"
	}
	m.crash(CrashStopExited)
	// The VMM is gone: its jail goes too (the VMM's own cleanup did it
	// already unless the boot was cancelled before a launch).
	if err := m.releaseJail(inst.id, inst.limits); err != nil {
		attrs["error"] = err.Error()
		inst.log.Error("removing the jail", "error", err)
	}
	inst.mu.Lock()
	defer inst.mu.Unlock()
	inst.vm = nil
	inst.rec.Process.PID = 0
	inst.rec.StoppedAt = m.now()
	m.transitionLocked(inst, StateStopped, ActionStopped, attrs)
	return nil
}

// Remove deletes a sandbox and every resource it holds. A sandbox that is
// not stopped or failed needs force, which kills its VMM (or cancels its
// boot) without a graceful wait.
func (m *Manager) Remove(ctx context.Context, id string, force bool) error {
	inst, err := m.lockLive(ctx, id)
	if err != nil {
		return err
	}
	defer inst.unlock()
	return m.removeLocked(ctx, inst, force, "remove requested")
}

// removeLocked is Remove with the operation lock held.
func (m *Manager) removeLocked(ctx context.Context, inst *instance, force bool, reason string) error {
	inst.mu.Lock()
	state := inst.rec.State
	inst.mu.Unlock()
	if !state.Final() {
		if !force {
			return fmt.Errorf("sandbox %s is %s; stop it first or remove it with --force: %w",
				inst.id, state, errdefs.ErrFailedPrecondition)
		}
		if err := m.stopLocked(ctx, inst, 0, true, reason); err != nil {
			return err
		}
	}
	inst.mu.Lock()
	dir := inst.rec.Dir
	if inst.ttl != nil {
		inst.ttl.Stop()
	}
	// Record the intent first: a daemon that dies from here on leaves a
	// record that the next start finishes removing, never a record whose
	// resources are half gone.
	if !inst.removing {
		inst.removing = true
		m.persistLocked(inst)
	}
	inst.mu.Unlock()
	m.crash(CrashRemoveMarked)
	if err := m.releaseAll(ctx, inst.id, inst.limits, dir); err != nil {
		return err
	}
	m.crash(CrashRemoveReleased)
	m.mu.Lock()
	delete(m.sandboxes, inst.id)
	m.mu.Unlock()
	inst.mu.Lock()
	inst.removed = true
	m.publishLocked(inst, ActionRemoved, map[string]string{"reason": reason})
	inst.mu.Unlock()
	inst.log.Info("sandbox removed", "reason", reason)
	return nil
}

// releaseAll releases what a sandbox without a VMM holds: its network
// (and lease), its jail and its directory. It is idempotent.
func (m *Manager) releaseAll(ctx context.Context, id string, limits vmm.Limits, dir string) error {
	if m.cfg.Network != nil {
		if err := m.cfg.Network.Detach(ctx, id); err != nil {
			return fmt.Errorf("sandbox %s: releasing its network: %w", id, err)
		}
	}
	if err := m.releaseJail(id, limits); err != nil {
		return fmt.Errorf("sandbox %s: %w", id, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("sandbox %s: removing %s: %w", id, dir, err)
	}
	return nil
}

// expire removes a sandbox whose TTL ran out. It runs on the timer's
// goroutine, tracked by the manager's WaitGroup unless Shutdown has begun.
func (m *Manager) expire(id string) {
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		return
	}
	inst := m.sandboxes[id]
	if inst == nil {
		m.mu.Unlock()
		return
	}
	m.wg.Add(1)
	m.mu.Unlock()
	defer m.wg.Done()

	ctx := m.baseCtx
	if err := inst.lock(ctx); err != nil {
		return
	}
	defer inst.unlock()
	inst.mu.Lock()
	if inst.removed {
		inst.mu.Unlock()
		return
	}
	m.publishLocked(inst, ActionExpired, map[string]string{"reason": "ttl", "ttl": inst.rec.TTL.String()})
	inst.mu.Unlock()
	inst.log.Info("sandbox TTL expired")
	if err := m.removeLocked(context.WithoutCancel(ctx), inst, true, "ttl"); err != nil {
		inst.log.Error("removing expired sandbox", "error", err)
	}
}

// Shutdown ends the manager. In ShutdownStop mode it stops every sandbox
// (gracefully within Config.StopTimeout, in parallel) and removes it and
// everything it holds, its store record included; when ctx ends first, the
// remaining VMMs are killed instead of waited for, and ctx's error is
// returned. In ShutdownLeave mode it only ends the background work and
// closes the VMM handles: the VMMs keep running and Recover re-adopts them
// at the next start. Either way it waits for all background work, and
// Create fails with ErrUnavailable from now on.
func (m *Manager) Shutdown(ctx context.Context) error {
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		select {
		case <-m.shutdownDone:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("sandbox manager shutdown: %w", ctx.Err())
		}
	}
	m.closing = true
	insts := slices.Collect(maps.Values(m.sandboxes))
	m.mu.Unlock()
	if m.cfg.OnShutdown == ShutdownLeave {
		return m.leave(ctx, insts)
	}
	m.log.Info("stopping all sandboxes", "count", len(insts))
	m.eachLocked(ctx, insts, func(inst *instance) {
		inst.mu.Lock()
		removed, final := inst.removed, inst.rec.State.Final()
		inst.mu.Unlock()
		if removed {
			return
		}
		if !final {
			if err := m.stopLocked(ctx, inst, m.cfg.StopTimeout, false, "daemon shutdown"); err != nil {
				inst.log.Error("stopping sandbox at shutdown", "error", err)
				return
			}
		}
		// "stop" mode ends with nothing: release the sandbox's files
		// and its record too.
		if err := m.removeLocked(context.WithoutCancel(ctx), inst, true, "daemon shutdown"); err != nil {
			inst.log.Error("removing sandbox at shutdown", "error", err)
		}
	})
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sandbox manager shutdown: graceful stops cut short: %w", err)
	}
	return nil
}

// leave is Shutdown in ShutdownLeave mode: every TTL timer and watcher
// ends and every VMM handle is closed, but the VMMs keep running and their
// records stay in the store for the next Recover. A sandbox still booting
// has its boot cancelled (it is recorded as failed).
func (m *Manager) leave(ctx context.Context, insts []*instance) error {
	m.log.Info("leaving sandboxes running", "count", len(insts))
	m.eachLocked(ctx, insts, func(inst *instance) {
		inst.cancel()
		<-inst.done
		inst.mu.Lock()
		mach := inst.vm
		inst.vm = nil
		inst.mu.Unlock()
		if mach != nil {
			if err := mach.Close(); err != nil {
				inst.log.Warn("closing the VMM handle", "error", err)
			}
		}
	})
	return nil
}

// eachLocked is the common part of both shutdown modes: it stops every TTL
// timer, runs fn on every instance in parallel with its operation lock held
// (waiting for the lock is not bounded by ctx: the work must complete), then
// waits for all background goroutines and marks the shutdown done.
func (m *Manager) eachLocked(ctx context.Context, insts []*instance, fn func(*instance)) {
	var wg sync.WaitGroup
	for _, inst := range insts {
		inst.mu.Lock()
		if inst.ttl != nil {
			inst.ttl.Stop()
		}
		inst.mu.Unlock()
		wg.Go(func() {
			if err := inst.lock(context.WithoutCancel(ctx)); err != nil {
				return
			}
			defer inst.unlock()
			fn(inst)
		})
	}
	wg.Wait()
	m.wg.Wait()
	m.baseCancel()
	close(m.shutdownDone)
}
