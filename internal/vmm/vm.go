package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/firecracker"
)

// cleanupTimeout bounds the kill-and-reap of a failed start or restore,
// which runs even when the caller's context has ended.
const cleanupTimeout = 10 * time.Second

// ErrDiffWithoutDirtyTracking is returned by CreateSnapshot for a Diff
// snapshot of a VM started without TrackDirtyPages: Firecracker would fall
// back to mincore(2), which is wrong when the host swaps.
var ErrDiffWithoutDirtyTracking = errors.New("vmm: diff snapshots need a VM started with dirty page tracking")

// VM is a running (or ended) Firecracker microVM. Paths are host paths.
type VM struct {
	// ID is the instance id.
	ID string
	// Process is the Firecracker process.
	Process *Process
	// Client talks to the VM's API socket.
	Client *firecracker.Client
	// SocketPath is the API socket.
	SocketPath string
	// ConsolePath receives the serial console (process stdout/stderr).
	ConsolePath string
	// LogPath is the Firecracker log file, if any.
	LogPath string
	// MetricsPath is the metrics file, if any.
	MetricsPath string
	// VsockPath is the vsock host socket, if any.
	VsockPath string
	// Jail describes the VMM's jail; nil for an unjailed VMM.
	Jail *Jail

	paths           PathMapper
	trackDirtyPages bool
	cleanupOnce     sync.Once
	// release is the launcher's cleanup (a jail), run once by cleanup.
	release    func() error
	cleanupErr error
	// dir is where Firecracker's relative paths resolve on the host.
	dir string
}

// step runs one configuration call and names it in the error.
func step(name string, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// Start validates spec, launches Firecracker through launcher, configures
// the microVM over the API and starts it. When any step fails, the process
// is killed and reaped, the API and vsock sockets are removed and the
// returned error names the step and carries Firecracker's fault message.
func Start(ctx context.Context, launcher Launcher, spec VMSpec) (*VM, error) {
	spec = spec.withDefaults()
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("vmm: start %s: %w", spec.ID, err)
	}
	if err := os.MkdirAll(spec.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("vmm: start %s: %w", spec.ID, err)
	}
	if spec.Vsock != nil {
		vsockPath := spec.Vsock.UDSPath
		if !filepath.IsAbs(vsockPath) {
			vsockPath = filepath.Join(spec.Dir, vsockPath)
		}
		// Firecracker refuses to bind an existing path.
		if err := removeSocket(vsockPath); err != nil {
			return nil, fmt.Errorf("vmm: start %s: removing stale vsock socket: %w", spec.ID, err)
		}
	}
	// A jailing launcher places these files in the jail; drives given as
	// relative paths are expected there already.
	files := []JailFile{{HostPath: spec.Kernel, JailName: JailKernelName}}
	if spec.Initrd != "" {
		files = append(files, JailFile{HostPath: spec.Initrd, JailName: JailInitrdName})
	}
	for _, d := range spec.Drives {
		if filepath.IsAbs(d.Path) {
			files = append(files, JailFile{HostPath: d.Path, JailName: "drive_" + d.ID})
		}
	}
	vm, err := launch(ctx, launcher, LaunchRequest{
		ID: spec.ID, Dir: spec.Dir, SocketPath: spec.APISocket, ConsolePath: spec.ConsolePath,
		LogLevel: spec.Logging.Level, LogPath: spec.Logging.LogPath, MetricsPath: spec.Logging.MetricsPath,
		NetNS: spec.NetNS, Limits: &Limits{VCPUs: spec.VCPUs, MemoryMiB: spec.MemoryMiB}, Files: files,
	})
	if err != nil {
		return nil, fmt.Errorf("vmm: start %s: %w", spec.ID, err)
	}
	if spec.Vsock != nil {
		vm.VsockPath = vm.hostPath(spec.Vsock.UDSPath)
	}
	vm.trackDirtyPages = spec.TrackDirtyPages
	if err := vm.configure(ctx, spec); err != nil {
		return nil, fmt.Errorf("vmm: start %s: %w", spec.ID, vm.abort(ctx, err))
	}
	if err := vm.restrictJail(); err != nil {
		return nil, fmt.Errorf("vmm: start %s: %w", spec.ID, vm.abort(ctx, err))
	}
	return vm, nil
}

// launch starts the process and builds the VM value around it.
func launch(ctx context.Context, launcher Launcher, req LaunchRequest) (*VM, error) {
	l, err := launcher.Launch(ctx, req)
	if err != nil {
		return nil, err
	}
	paths := l.Paths
	if paths == nil {
		paths = IdentityPaths
	}
	vm := &VM{
		ID:          req.ID,
		Process:     l.Process,
		Client:      firecracker.NewClient(l.SocketPath),
		SocketPath:  l.SocketPath,
		ConsolePath: req.ConsolePath,
		LogPath:     req.LogPath,
		MetricsPath: req.MetricsPath,
		Jail:        l.Jail,
		paths:       paths,
		release:     l.Cleanup,
		dir:         l.Dir,
	}
	if vm.dir == "" {
		vm.dir = req.Dir
	}
	if l.LogPath != "" {
		vm.LogPath = l.LogPath
	}
	if l.MetricsPath != "" {
		vm.MetricsPath = l.MetricsPath
	}
	return vm, nil
}

// restrictJail takes other users' permissions away from what the
// configuration created in a jail (the vsock socket); a no-op unjailed.
func (vm *VM) restrictJail() error {
	if vm.Jail == nil {
		return nil
	}
	return restrictJail(vm.Jail.Root)
}

// hostPath returns the host path of a path handed to Firecracker: a
// relative path resolves in its working directory (a jail's root).
func (vm *VM) hostPath(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(vm.dir, p)
}

// configure sends the pre-boot configuration and InstanceStart.
func (vm *VM) configure(ctx context.Context, spec VMSpec) error {
	c := vm.Client
	mc := firecracker.MachineConfiguration{VCPUCount: spec.VCPUs, MemSizeMiB: spec.MemoryMiB}
	if spec.SMT {
		mc.SMT = firecracker.Bool(true)
	}
	if spec.TrackDirtyPages {
		mc.TrackDirtyPages = firecracker.Bool(true)
	}
	if err := step("machine-config", c.PutMachineConfig(ctx, mc)); err != nil {
		return err
	}
	kernel, err := vm.paths(spec.Kernel)
	if err != nil {
		return step("boot-source", err)
	}
	bs := firecracker.BootSource{KernelImagePath: kernel, BootArgs: spec.BootArgs}
	if spec.Initrd != "" {
		if bs.InitrdPath, err = vm.paths(spec.Initrd); err != nil {
			return step("boot-source", err)
		}
	}
	if err := step("boot-source", c.PutBootSource(ctx, bs)); err != nil {
		return err
	}
	for _, d := range spec.Drives {
		name := fmt.Sprintf("drive %q", d.ID)
		p, err := vm.paths(d.Path)
		if err != nil {
			return step(name, err)
		}
		err = c.PutDrive(ctx, firecracker.Drive{
			DriveID:      d.ID,
			PartUUID:     d.PartUUID,
			IsRootDevice: d.Root,
			CacheType:    d.CacheType,
			IsReadOnly:   firecracker.Bool(d.ReadOnly),
			PathOnHost:   p,
			RateLimiter:  d.RateLimiter,
			IOEngine:     d.IOEngine,
		})
		if err := step(name, err); err != nil {
			return err
		}
	}
	for _, n := range spec.NICs {
		err := c.PutNetworkInterface(ctx, firecracker.NetworkInterface{
			IfaceID:       n.ID,
			HostDevName:   n.HostDevName,
			GuestMAC:      n.GuestMAC,
			MTU:           n.MTU,
			RxRateLimiter: n.RxRateLimiter,
			TxRateLimiter: n.TxRateLimiter,
		})
		if err := step(fmt.Sprintf("network interface %q", n.ID), err); err != nil {
			return err
		}
	}
	if spec.Vsock != nil {
		p, err := vm.paths(spec.Vsock.UDSPath)
		if err != nil {
			return step("vsock", err)
		}
		if err := step("vsock", c.PutVsock(ctx, firecracker.Vsock{GuestCID: spec.Vsock.CID, UDSPath: p})); err != nil {
			return err
		}
	}
	return step("InstanceStart", c.InstanceStart(ctx))
}

// abort kills a VM whose start or restore failed with err, cleans up and
// returns err, annotated with the exit status and console tail when the
// process had died by itself (e.g. the connection broke because Firecracker
// exited). It runs on a detached, bounded context so that a cancelled ctx
// still cleans up.
func (vm *VM) abort(ctx context.Context, err error) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if !firecracker.IsAPIError(err) && ctx.Err() == nil {
		// A transport failure: give a dying process a moment to be reaped.
		select {
		case <-vm.Process.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	if vm.Process.Exited() {
		st, _ := vm.Process.Wait(cctx)
		err = fmt.Errorf("%w (firecracker %s; console tail:\n%s)", err, st, consoleTail(vm.ConsolePath))
	} else {
		_ = vm.Process.Kill()
		_, _ = vm.Process.Wait(cctx)
	}
	if cerr := vm.cleanup(); cerr != nil {
		err = fmt.Errorf("%w (and %v)", err, cerr)
	}
	return err
}

// cleanup releases the client and the pidfd, removes the sockets that
// Firecracker leaves behind and then the launcher's leftovers (a jail and
// its cgroups). It runs once, after the process ended, and returns the
// error of that release.
func (vm *VM) cleanup() error {
	vm.cleanupOnce.Do(func() {
		vm.Client.Close()
		_ = removeSocket(vm.SocketPath)
		_ = removeSocket(vm.VsockPath)
		if vm.Process.Exited() {
			_ = vm.Process.Close()
		}
		if vm.release != nil && vm.Process.Exited() {
			vm.cleanupErr = vm.release()
		}
	})
	return vm.cleanupErr
}

// RestoreSpec describes a snapshot restore into a fresh process.
type RestoreSpec struct {
	// ID is the instance id of the new process. Required.
	ID string
	// Dir is the VM's directory (created if missing). Required.
	Dir string
	// APISocket is the API socket path; empty means Dir/firecracker.sock.
	APISocket string
	// ConsolePath is the console file; empty means Dir/console.log.
	ConsolePath string
	// Logging configures the logger and metrics (not part of snapshots).
	Logging LoggingSpec
	// SnapshotPath is the vmstate file. Required.
	SnapshotPath string
	// MemFilePath is the guest memory file (File backend). Required.
	MemFilePath string
	// ResumeVM resumes the VM after loading; otherwise it stays Paused.
	ResumeVM bool
	// TrackDirtyPages enables dirty page tracking in the restored VM.
	TrackDirtyPages bool
	// ClockRealtime advances the guest clock by the elapsed wall time (x86).
	ClockRealtime bool
	// NetworkOverrides maps interface ids to new TAP names.
	NetworkOverrides []firecracker.NetworkOverride
	// VsockPath, when set, overrides the vsock host socket (vsock_override).
	VsockPath string
	// NetNS is the network namespace (path) the VMM runs in; empty means
	// the caller's.
	NetNS string
	// Limits are the restored VMM's resource limits (the snapshot's
	// vCPUs and memory; enforced under the jailer). Optional.
	Limits *Limits
}

// Validate returns every problem of the spec, joined, or nil.
func (s RestoreSpec) Validate() error {
	var errs []error
	if err := ValidateInstanceID(s.ID); err != nil {
		errs = append(errs, err)
	}
	if s.Dir == "" {
		errs = append(errs, errors.New("dir: required"))
	}
	if s.SnapshotPath == "" {
		errs = append(errs, errors.New("snapshot path: required"))
	}
	if s.MemFilePath == "" {
		errs = append(errs, errors.New("memory file path: required"))
	}
	for _, o := range s.NetworkOverrides {
		if err := validateResourceID(o.IfaceID); err != nil {
			errs = append(errs, fmt.Errorf("network override: %w", err))
		}
		if o.HostDevName == "" || len(o.HostDevName) > maxTAPName {
			errs = append(errs, fmt.Errorf("network override %q: host device name must be 1..%d bytes", o.IfaceID, maxTAPName))
		}
	}
	if len(s.VsockPath) > maxSocketPath {
		errs = append(errs, fmt.Errorf("vsock path %q longer than %d bytes", s.VsockPath, maxSocketPath))
	}
	if s.Logging.Level != "" {
		if err := ValidateLogLevel(s.Logging.Level); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid restore spec: %w", err)
	}
	return nil
}

// Restore starts a fresh Firecracker process through launcher and loads a
// snapshot into it (File memory backend). On failure the process (which
// Firecracker ends itself after a failed load) is killed and reaped, its
// sockets removed, and the error carries Firecracker's fault message.
func Restore(ctx context.Context, launcher Launcher, spec RestoreSpec) (*VM, error) {
	vs := VMSpec{Dir: spec.Dir, APISocket: spec.APISocket, ConsolePath: spec.ConsolePath}.withDefaults()
	spec.APISocket, spec.ConsolePath = vs.APISocket, vs.ConsolePath
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("vmm: restore %s: %w", spec.ID, err)
	}
	if err := os.MkdirAll(spec.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("vmm: restore %s: %w", spec.ID, err)
	}
	if vsockPath := spec.VsockPath; vsockPath != "" {
		if !filepath.IsAbs(vsockPath) {
			vsockPath = filepath.Join(spec.Dir, vsockPath)
		}
		if err := removeSocket(vsockPath); err != nil {
			return nil, fmt.Errorf("vmm: restore %s: removing stale vsock socket: %w", spec.ID, err)
		}
	}
	var files []JailFile
	for _, f := range []JailFile{{spec.SnapshotPath, "snapshot.vmstate"}, {spec.MemFilePath, "snapshot.mem"}} {
		if filepath.IsAbs(f.HostPath) {
			files = append(files, f)
		}
	}
	vm, err := launch(ctx, launcher, LaunchRequest{
		ID: spec.ID, Dir: spec.Dir, SocketPath: spec.APISocket, ConsolePath: spec.ConsolePath,
		LogLevel: spec.Logging.Level, LogPath: spec.Logging.LogPath, MetricsPath: spec.Logging.MetricsPath,
		NetNS: spec.NetNS, Limits: spec.Limits, Files: files,
	})
	if err != nil {
		return nil, fmt.Errorf("vmm: restore %s: %w", spec.ID, err)
	}
	vm.VsockPath = vm.hostPath(spec.VsockPath)
	vm.trackDirtyPages = spec.TrackDirtyPages
	if err := vm.load(ctx, spec); err != nil {
		return nil, fmt.Errorf("vmm: restore %s: %w", spec.ID, vm.abort(ctx, err))
	}
	if err := vm.restrictJail(); err != nil {
		return nil, fmt.Errorf("vmm: restore %s: %w", spec.ID, vm.abort(ctx, err))
	}
	return vm, nil
}

func (vm *VM) load(ctx context.Context, spec RestoreSpec) error {
	snap, err := vm.paths(spec.SnapshotPath)
	if err != nil {
		return step("snapshot/load", err)
	}
	mem, err := vm.paths(spec.MemFilePath)
	if err != nil {
		return step("snapshot/load", err)
	}
	p := firecracker.SnapshotLoadParams{
		SnapshotPath:     snap,
		MemBackend:       firecracker.MemoryBackend{BackendType: firecracker.MemoryBackendFile, BackendPath: mem},
		NetworkOverrides: spec.NetworkOverrides,
	}
	if spec.ResumeVM {
		p.ResumeVM = firecracker.Bool(true)
	}
	if spec.TrackDirtyPages {
		p.TrackDirtyPages = firecracker.Bool(true)
	}
	if spec.ClockRealtime {
		p.ClockRealtime = firecracker.Bool(true)
	}
	if spec.VsockPath != "" {
		v, err := vm.paths(spec.VsockPath)
		if err != nil {
			return step("snapshot/load", err)
		}
		p.VsockOverride = &firecracker.VsockOverride{UDSPath: v}
	}
	return step("snapshot/load", vm.Client.LoadSnapshot(ctx, p))
}

// Pause pauses the microVM (idempotent).
func (vm *VM) Pause(ctx context.Context) error {
	if err := vm.Client.Pause(ctx); err != nil {
		return fmt.Errorf("vmm: pause %s: %w", vm.ID, err)
	}
	return nil
}

// Resume resumes the microVM (idempotent).
func (vm *VM) Resume(ctx context.Context) error {
	if err := vm.Client.Resume(ctx); err != nil {
		return fmt.Errorf("vmm: resume %s: %w", vm.ID, err)
	}
	return nil
}

// State returns the instance state from GET / .
func (vm *VM) State(ctx context.Context) (firecracker.InstanceState, error) {
	info, err := vm.Client.DescribeInstance(ctx)
	if err != nil {
		return "", fmt.Errorf("vmm: describe %s: %w", vm.ID, err)
	}
	return info.State, nil
}

// CreateSnapshot writes a snapshot of the paused VM; paths are host paths.
// A Diff snapshot is refused unless the VM was started (or restored) with
// dirty page tracking.
func (vm *VM) CreateSnapshot(ctx context.Context, p firecracker.SnapshotCreateParams) error {
	if p.SnapshotType == firecracker.SnapshotDiff && !vm.trackDirtyPages {
		return fmt.Errorf("vmm: snapshot %s: %w", vm.ID, ErrDiffWithoutDirtyTracking)
	}
	var err error
	if p.SnapshotPath, err = vm.paths(p.SnapshotPath); err != nil {
		return fmt.Errorf("vmm: snapshot %s: %w", vm.ID, err)
	}
	if p.MemFilePath, err = vm.paths(p.MemFilePath); err != nil {
		return fmt.Errorf("vmm: snapshot %s: %w", vm.ID, err)
	}
	if err := vm.Client.CreateSnapshot(ctx, p); err != nil {
		return fmt.Errorf("vmm: snapshot %s: %w", vm.ID, err)
	}
	return nil
}

// Shutdown asks the guest to stop (resuming a paused VM first, then
// SendCtrlAltDel) and waits for the process to exit until ctx ends; then it
// falls back to SIGKILL. Afterwards the API and vsock sockets are removed.
// It returns the process's exit status.
func (vm *VM) Shutdown(ctx context.Context) (ExitStatus, error) {
	if !vm.Process.Exited() {
		graceful := func() error {
			if st, err := vm.Client.DescribeInstance(ctx); err == nil && st.State == firecracker.StatePaused {
				if err := vm.Client.Resume(ctx); err != nil {
					return err
				}
			}
			return vm.Client.SendCtrlAltDel(ctx)
		}
		if err := graceful(); err == nil {
			select {
			case <-vm.Process.Done():
			case <-ctx.Done():
			}
		}
	}
	return vm.Kill(ctx)
}

// Kill sends SIGKILL (unless the process already ended), waits for the
// process and removes the API and vsock sockets. Waiting is not bounded by
// ctx's cancellation (a SIGKILLed process always ends) but by a fixed
// cleanup timeout.
func (vm *VM) Kill(ctx context.Context) (ExitStatus, error) {
	if err := vm.Process.Kill(); err != nil {
		return ExitStatus{}, fmt.Errorf("vmm: kill %s: %w", vm.ID, err)
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	return vm.Wait(cctx)
}

// Wait waits for the process to end (guest reboot, Shutdown, Kill, crash)
// or for ctx, then removes the sockets Firecracker leaves behind.
func (vm *VM) Wait(ctx context.Context) (ExitStatus, error) {
	st, err := vm.Process.Wait(ctx)
	if err != nil {
		return st, fmt.Errorf("vmm: wait %s: %w", vm.ID, err)
	}
	if err := vm.cleanup(); err != nil {
		return st, fmt.Errorf("vmm: wait %s: %w", vm.ID, err)
	}
	return st, nil
}

// Close releases the VM's resources (client connections, pidfd) without
// stopping the microVM, e.g. when the daemon exits and leaves VMs running.
func (vm *VM) Close() error {
	vm.Client.Close()
	return vm.Process.Close()
}
