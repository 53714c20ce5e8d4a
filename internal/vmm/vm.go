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
	// ownDir is the VMM's own directory (LaunchRequest.Dir), which holds
	// its console and, unjailed, all its files.
	ownDir string
	// exitOnce settles exit, the status Wait reports, once the process
	// has ended.
	exitOnce sync.Once
	exit     ExitStatus
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
		if err := removeFile(vsockPath); err != nil {
			return nil, fmt.Errorf("vmm: start %s: removing stale vsock socket: %w", spec.ID, err)
		}
	}
	// A jailing launcher places these files in the jail; a kernel, an
	// initrd or a drive given as a relative path is expected there
	// already (the caller placed it from a checked descriptor).
	var files []JailFile
	for _, f := range []JailFile{{HostPath: spec.Kernel, JailName: JailKernelName}, {HostPath: spec.Initrd, JailName: JailInitrdName}} {
		if filepath.IsAbs(f.HostPath) {
			files = append(files, f)
		}
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
	return newVM(req.ID, l, req.Dir, req.ConsolePath, req.LogPath, req.MetricsPath), nil
}

// newVM builds the VM value around a launched (or adopted) process; dir,
// logPath and metricsPath are used where l leaves them empty.
func newVM(id string, l *Launched, dir, consolePath, logPath, metricsPath string) *VM {
	paths := l.Paths
	if paths == nil {
		paths = IdentityPaths
	}
	vm := &VM{
		ID:          id,
		Process:     l.Process,
		Client:      firecracker.NewClient(l.SocketPath),
		SocketPath:  l.SocketPath,
		ConsolePath: consolePath,
		LogPath:     logPath,
		MetricsPath: metricsPath,
		Jail:        l.Jail,
		paths:       paths,
		release:     l.Cleanup,
		dir:         l.Dir,
		ownDir:      dir,
	}
	if vm.dir == "" {
		vm.dir = dir
	}
	if l.LogPath != "" {
		vm.LogPath = l.LogPath
	}
	if l.MetricsPath != "" {
		vm.MetricsPath = l.MetricsPath
	}
	return vm
}

// Workspace returns where the VM's files live (as the launcher's
// Workspace laid them out), with the paths the VM actually uses: the same
// for a VM that was started, restored or adopted.
func (vm *VM) Workspace() Workspace {
	var w Workspace
	if vm.Jail != nil {
		w = workspaceOf(*vm.Jail, vm.ownDir)
	} else {
		w = workspaceIn(vm.ID, vm.ownDir)
		w.Root = vm.dir
	}
	w.APISocket, w.ConsolePath, w.LogPath, w.MetricsPath = vm.SocketPath, vm.ConsolePath, vm.LogPath, vm.MetricsPath
	if vm.VsockPath != "" {
		w.VsockPath = vm.VsockPath
	}
	return w
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
		_ = removeFile(vm.SocketPath)
		_ = removeFile(vm.VsockPath)
		if vm.Process.Exited() {
			_ = vm.Process.Close()
		}
		if vm.release != nil && vm.Process.Exited() {
			vm.cleanupErr = vm.release()
		}
	})
	return vm.cleanupErr
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

// Describe returns what GET / reports: the instance id and state.
func (vm *VM) Describe(ctx context.Context) (InstanceInfo, error) {
	info, err := vm.Client.DescribeInstance(ctx)
	if err != nil {
		return InstanceInfo{}, fmt.Errorf("vmm: describe %s: %w", vm.ID, err)
	}
	return InstanceInfo{ID: info.ID, State: info.State, VMMVersion: info.VMMVersion}, nil
}

// State returns the instance state from GET / .
func (vm *VM) State(ctx context.Context) (InstanceState, error) {
	info, err := vm.Describe(ctx)
	return info.State, err
}

// SnapshotSpec names the files of a snapshot; paths are host paths (for
// a jailed VM: inside its jail's root).
type SnapshotSpec struct {
	// StatePath receives the microVM state (vmstate). Required.
	StatePath string
	// MemPath receives the guest memory. Required.
	MemPath string
	// Diff writes only the pages dirtied since the previous snapshot; the
	// VM must have been started (or restored) with dirty page tracking.
	Diff bool
}

// CreateSnapshot writes a snapshot of the paused VM. A Diff snapshot is
// refused (ErrDiffWithoutDirtyTracking) unless the VM was started,
// restored or adopted with dirty page tracking.
func (vm *VM) CreateSnapshot(ctx context.Context, s SnapshotSpec) error {
	if s.StatePath == "" || s.MemPath == "" {
		return fmt.Errorf("vmm: snapshot %s: the state and memory paths are required", vm.ID)
	}
	if vm.paths == nil {
		return fmt.Errorf("vmm: snapshot %s: the VM was not built by Start, Restore or Adopt", vm.ID)
	}
	p := firecracker.SnapshotCreateParams{SnapshotType: firecracker.SnapshotFull}
	if s.Diff {
		if !vm.trackDirtyPages {
			return fmt.Errorf("vmm: snapshot %s: %w", vm.ID, ErrDiffWithoutDirtyTracking)
		}
		p.SnapshotType = firecracker.SnapshotDiff
	}
	var err error
	if p.SnapshotPath, err = vm.paths(s.StatePath); err != nil {
		return fmt.Errorf("vmm: snapshot %s: %w", vm.ID, err)
	}
	if p.MemFilePath, err = vm.paths(s.MemPath); err != nil {
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
			if st, err := vm.Client.DescribeInstance(ctx); err == nil && st.State == StatePaused {
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
// or for ctx, then removes the sockets Firecracker leaves behind (and the
// launcher's leftovers, such as a jail).
//
// The status of a process that is not our child (an adopted VMM, or one
// attached through the jailer's pid file) cannot be collected; for such a
// process the code of the exit line Firecracker logs last is reported
// instead, when LogPath holds one (ExitStatus.FromLog), read before the
// cleanup removes anything. Without that line (killed by a signal, no log
// file, a log level above Info after a clean exit) the status stays
// unknown.
func (vm *VM) Wait(ctx context.Context) (ExitStatus, error) {
	st, err := vm.Process.Wait(ctx)
	if err != nil {
		return st, fmt.Errorf("vmm: wait %s: %w", vm.ID, err)
	}
	st = vm.exitStatus(st)
	if err := vm.cleanup(); err != nil {
		return st, fmt.Errorf("vmm: wait %s: %w", vm.ID, err)
	}
	return st, nil
}

// exitStatus settles the status of the ended process once: st, or, when
// st is unknown, the code Firecracker logged as it exited.
func (vm *VM) exitStatus(st ExitStatus) ExitStatus {
	vm.exitOnce.Do(func() {
		if !st.Known && vm.LogPath != "" {
			if code, ok := exitCodeFromLog(vm.LogPath, vm.ID); ok {
				st = ExitStatus{Code: code, Known: true, FromLog: true}
			}
		}
		vm.exit = st
	})
	return vm.exit
}

// Close releases the VM's resources (client connections, pidfd) without
// stopping the microVM, e.g. when the daemon exits and leaves VMs running.
func (vm *VM) Close() error {
	vm.Client.Close()
	return vm.Process.Close()
}
