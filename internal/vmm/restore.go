package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/firecracker-vmm/firecracker-vmm/internal/firecracker"
)

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
		if err := removeFile(vsockPath); err != nil {
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
