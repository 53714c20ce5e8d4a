package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/firecracker-vmm/firecracker-vmm/internal/firecracker"
)

// PathMapper maps a host path to the path Firecracker must be given in API
// calls (for a jailed Firecracker: the path inside the chroot).
type PathMapper func(hostPath string) (string, error)

// IdentityPaths is the PathMapper of an unjailed Firecracker.
func IdentityPaths(hostPath string) (string, error) { return hostPath, nil }

// LaunchRequest describes one Firecracker process to start. All paths are
// host paths.
type LaunchRequest struct {
	// ID is the instance id (--id). Required.
	ID string
	// Dir is the VM's directory: the process's working directory. Required,
	// must exist.
	Dir string
	// SocketPath is the host path of the API socket. Required.
	SocketPath string
	// ConsolePath receives the process's stdout and stderr (the serial
	// console). Required.
	ConsolePath string
	// LogLevel overrides the launcher's Config.LogLevel when not empty.
	LogLevel string
	// LogPath is the Firecracker log file (--log-path); optional.
	LogPath string
	// MetricsPath is the metrics file (--metrics-path); optional.
	MetricsPath string
	// NetNS is the path of a network namespace (e.g. /run/netns/vmm-ID) the
	// process must run in; empty means the caller's namespace.
	NetNS string
	// Limits are the VMM's resource limits (cgroups under the jailer;
	// ignored by DirectLauncher). Optional.
	Limits *Limits
	// Files are host files Firecracker is given (kernel, initrd, ...): a
	// jailing launcher places each one outside the jail in the jail under
	// its JailName; DirectLauncher ignores them.
	Files []JailFile
}

// Launched is a started Firecracker process whose API socket answers.
type Launched struct {
	// Process is the handle on the Firecracker process.
	Process *Process
	// SocketPath is the host path of the API socket.
	SocketPath string
	// Paths maps host paths to the paths Firecracker must be given.
	Paths PathMapper
	// Dir is the host directory Firecracker's relative paths resolve in
	// (its working directory: LaunchRequest.Dir, or a jail's root).
	Dir string
	// LogPath and MetricsPath are the host paths of the log and metrics
	// files actually used; empty means the request's.
	LogPath, MetricsPath string
	// Jail describes the jail; nil for an unjailed process.
	Jail *Jail
	// Cleanup, when not nil, releases what the launch left on the host
	// (a jail and its cgroups). It is called once, after the process
	// has ended.
	Cleanup func() error
}

// Launcher starts Firecracker processes and owns what depends on how they
// are executed (directly or jailed): where a VMM's files live and how a
// VMM is found again.
type Launcher interface {
	// Launch starts a process and returns once the API socket answers
	// GET /; on any failure it leaves no process and no socket behind.
	Launch(ctx context.Context, req LaunchRequest) (*Launched, error)
	// Adopt supplies the mode-specific parts (socket, path mapper,
	// directory, jail and its cleanup) of a running process that Adopt
	// has verified as the VMM req.ID. It never signals the process and,
	// on error, leaves req.Process to the caller.
	Adopt(ctx context.Context, req AdoptRequest) (*Launched, error)
	// Workspace prepares (idempotently) where the files of VMM id live
	// and returns it; dir is the VMM's own directory (LaunchRequest.Dir).
	Workspace(id, dir string, limits Limits) (Workspace, error)
	// Layout returns where Workspace puts the files of VMM id (the same
	// paths) without creating or changing anything, e.g. to check paths
	// a record names.
	Layout(id, dir string, limits Limits) (Workspace, error)
	// ReleaseWorkspace removes what Workspace made outside dir (a jail and
	// the cgroups of limits); it is idempotent and must only be called
	// once no VMM of id runs.
	ReleaseWorkspace(id string, limits Limits) error
	// Workspaces returns the ids that have a workspace outside their own
	// directory (jails), for the cleanup of strays after a crash.
	Workspaces() ([]string, error)
	// FindVMMs returns the pids of the running VMMs of id, whose directory
	// is dir, whether or not a record of them survived.
	FindVMMs(id, dir string) ([]int, error)
}

// DirectLauncher starts the firecracker binary directly (no jailer); paths
// are used as they are.
type DirectLauncher struct {
	// Config holds the process options.
	Config Config
}

var _ Launcher = (*DirectLauncher)(nil)

// defaultPath is the child's PATH when the caller has none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// consoleTailBytes is how much of the console is quoted in start errors.
const consoleTailBytes = 2048

// Launch starts Firecracker in its own session with stdin from /dev/null and
// stdout+stderr appended to req.ConsolePath, removes a stale API socket
// first, and waits up to Config.SocketTimeout for the API to answer. If the
// process exits meanwhile the error carries its exit status and the tail of
// the console; on timeout (or when ctx ends) the process is killed and
// reaped and the socket removed.
func (l *DirectLauncher) Launch(ctx context.Context, req LaunchRequest) (*Launched, error) {
	if err := l.Config.Validate(); err != nil {
		return nil, fmt.Errorf("vmm: launch %s: %w", req.ID, err)
	}
	if req.Dir == "" || req.ConsolePath == "" {
		return nil, fmt.Errorf("vmm: launch %s: Dir and ConsolePath are required", req.ID)
	}
	args, err := Args(l.Config, Invocation{
		ID: req.ID, APISocket: req.SocketPath, LogLevel: req.LogLevel,
		LogPath: req.LogPath, MetricsPath: req.MetricsPath,
	})
	if err != nil {
		return nil, err
	}
	bin, err := exec.LookPath(l.Config.Binary)
	if err != nil {
		return nil, fmt.Errorf("vmm: launch %s: %w", req.ID, err)
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return nil, fmt.Errorf("vmm: launch %s: %w", req.ID, err)
	}
	if err := removeFile(req.SocketPath); err != nil {
		return nil, fmt.Errorf("vmm: launch %s: removing stale API socket: %w", req.ID, err)
	}
	if err := truncateLog(req.LogPath); err != nil {
		return nil, fmt.Errorf("vmm: launch %s: log file: %w", req.ID, err)
	}
	proc, err := startProcess(bin, args, req.Dir, req.ConsolePath, req.NetNS, childEnv(l.Config.Env))
	if err != nil {
		return nil, fmt.Errorf("vmm: launch %s: %w", req.ID, err)
	}
	timeout := l.Config.SocketTimeout
	if timeout == 0 {
		timeout = DefaultSocketTimeout
	}
	if err := waitSocket(ctx, proc, req.SocketPath, timeout); err != nil {
		if proc.Exited() {
			st, _ := proc.Wait(context.Background())
			err = fmt.Errorf("firecracker exited before its API socket was ready (%s); console tail:\n%s",
				st, consoleTail(req.ConsolePath))
		} else {
			_ = proc.Kill()
			_, _ = proc.Wait(context.WithoutCancel(ctx))
		}
		_ = proc.Close()
		_ = removeFile(req.SocketPath)
		return nil, fmt.Errorf("vmm: launch %s: %w", req.ID, err)
	}
	return &Launched{Process: proc, SocketPath: req.SocketPath, Paths: IdentityPaths, Dir: req.Dir}, nil
}

// Adopt implements Launcher: the socket is req.APISocket (default
// Dir/firecracker.sock), paths map to themselves and Firecracker's
// relative paths resolve in req.Dir.
func (l *DirectLauncher) Adopt(_ context.Context, req AdoptRequest) (*Launched, error) {
	if req.Dir == "" || req.Process == nil {
		return nil, fmt.Errorf("vmm: adopt %s: Dir and Process are required", req.ID)
	}
	socket := req.APISocket
	if socket == "" {
		socket = filepath.Join(req.Dir, DefaultAPISocketName)
	}
	return &Launched{Process: req.Process, SocketPath: socket, Paths: IdentityPaths, Dir: req.Dir}, nil
}

// Workspace implements Launcher: an unjailed VMM's files live in dir
// itself (created if missing), under the default names.
func (l *DirectLauncher) Workspace(id, dir string, _ Limits) (Workspace, error) {
	if err := ValidateInstanceID(id); err != nil {
		return Workspace{}, fmt.Errorf("vmm: workspace: %w", err)
	}
	if dir == "" {
		return Workspace{}, fmt.Errorf("vmm: workspace %s: dir is required", id)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Workspace{}, fmt.Errorf("vmm: workspace %s: %w", id, err)
	}
	return workspaceIn(id, dir), nil
}

// Layout implements Launcher: Workspace's paths, without creating dir.
func (l *DirectLauncher) Layout(id, dir string, _ Limits) (Workspace, error) {
	if err := ValidateInstanceID(id); err != nil {
		return Workspace{}, fmt.Errorf("vmm: layout: %w", err)
	}
	if dir == "" {
		return Workspace{}, fmt.Errorf("vmm: layout %s: dir is required", id)
	}
	return workspaceIn(id, dir), nil
}

// ReleaseWorkspace implements Launcher: an unjailed VMM has nothing
// outside its directory.
func (l *DirectLauncher) ReleaseWorkspace(string, Limits) error { return nil }

// Workspaces implements Launcher: no unjailed VMM has a workspace outside
// its directory.
func (l *DirectLauncher) Workspaces() ([]string, error) { return nil, nil }

// FindVMMs implements Launcher: the processes working in dir whose command
// line carries "--id id".
func (l *DirectLauncher) FindVMMs(id, dir string) ([]int, error) {
	return findInDir(id, dir)
}

// findInDir returns the pids of the processes working in dir whose command
// line carries "--id id" (Firecracker, or the jailer before its chroot).
func findInDir(id, dir string) ([]int, error) {
	if dir == "" {
		return nil, nil
	}
	dir = filepath.Clean(dir)
	return FindByCwd(func(pid int, cwd string) bool { return cwd == dir && HasInstanceID(pid, id) })
}

// truncateLog empties an existing regular log file: Firecracker writes its
// log from offset 0 without truncating, so an older, longer log would
// leave stale lines (an old exit line, say) after the new ones. FIFOs and
// missing files are left alone.
func truncateLog(path string) error {
	if path == "" {
		return nil
	}
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	return os.Truncate(path, 0)
}

// waitSocket probes GET / until it answers, the process exits, the timeout
// passes or ctx ends.
func waitSocket(ctx context.Context, proc *Process, socketPath string, timeout time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// Owned by this function: ends when wctx ends (at the latest on return).
	go func() {
		select {
		case <-proc.Done():
			cancel()
		case <-wctx.Done():
		}
	}()
	c := firecracker.NewClient(socketPath)
	defer c.Close()
	err := c.WaitReady(wctx)
	if err == nil {
		return nil
	}
	switch {
	case proc.Exited():
		return err
	case ctx.Err() != nil:
		return fmt.Errorf("waiting for API socket %s: %w", socketPath, ctx.Err())
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("timeout: API socket %s not ready after %v: %w", socketPath, timeout, err)
	default:
		return err
	}
}

// childEnv returns PATH plus extra.
func childEnv(extra []string) []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = defaultPath
	}
	env := []string{"PATH=" + path}
	for _, kv := range extra {
		if strings.HasPrefix(kv, "PATH=") {
			env[0] = kv
			continue
		}
		env = append(env, kv)
	}
	return env
}

// startProcess starts bin in its own session with a pidfd, inside the
// network namespace at netns when it is not empty.
func startProcess(bin string, args []string, dir, consolePath, netns string, env []string) (*Process, error) {
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer devNull.Close()
	console, err := os.OpenFile(consolePath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("opening console file: %w", err)
	}
	defer console.Close()
	pidfd := -1
	attr := &syscall.ProcAttr{
		Dir:   dir,
		Env:   env,
		Files: []uintptr{devNull.Fd(), console.Fd(), console.Fd()},
		Sys:   &syscall.SysProcAttr{Setsid: true, PidFD: &pidfd},
	}
	var pid int
	if netns == "" {
		pid, _, err = syscall.StartProcess(bin, append([]string{bin}, args...), attr)
	} else {
		pid, err = startInNetns(netns, bin, append([]string{bin}, args...), attr)
	}
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	if pidfd < 0 {
		// Kernel without CLONE_PIDFD: the pid cannot be recycled before we
		// reap it, so pidfd_open is race free for our own child.
		if pidfd, err = unix.PidfdOpen(pid, 0); err != nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			var ws syscall.WaitStatus
			_, _ = syscall.Wait4(pid, &ws, 0, nil)
			return nil, fmt.Errorf("pidfd_open(%d): %w", pid, err)
		}
	}
	proc, err := newProcess(pid, pidfd, true)
	if err != nil {
		_ = unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(pid, &ws, 0, nil)
		unix.Close(pidfd)
		return nil, err
	}
	return proc, nil
}

// startInNetns forks bin from an OS thread that has joined the network
// namespace at path, so the child is born in it. The thread is locked for
// the duration and its namespace restored; if restoring fails the goroutine
// ends still locked, which makes the runtime retire the thread.
func startInNetns(path, bin string, argv []string, attr *syscall.ProcAttr) (int, error) {
	target, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("network namespace: %w", err)
	}
	defer target.Close()
	type result struct {
		pid int
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("own network namespace: %w", err)}
			return
		}
		defer self.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("joining network namespace %s: %w", path, err)}
			return
		}
		pid, _, err := syscall.StartProcess(bin, argv, attr)
		if rerr := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); rerr != nil {
			// Leave the thread locked: it dies with this goroutine.
			done <- result{pid: pid, err: err}
			return
		}
		runtime.UnlockOSThread()
		done <- result{pid: pid, err: err}
	}()
	r := <-done
	return r.pid, r.err
}

// removeFile removes a file (e.g. a socket Firecracker left behind); an
// empty path or a missing file is not an error.
func removeFile(path string) error {
	if path == "" {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// consoleTail returns the last bytes of the console file.
func consoleTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(console unreadable: %v)", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > consoleTailBytes {
		_, _ = f.Seek(st.Size()-consoleTailBytes, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, consoleTailBytes))
	return strings.TrimSpace(string(b))
}
