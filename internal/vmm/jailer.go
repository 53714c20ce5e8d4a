package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// JailerLauncher starts Firecracker through the jailer: every VMM gets a
// fresh chroot, runs as JailerConfig's uid/gid, in its own cgroup (the
// launch's limits) and in the launch's network namespace.
type JailerLauncher struct {
	// Config holds Firecracker's options; Config.Binary is the exec file.
	Config Config
	// Jailer holds the jailer's options.
	Jailer JailerConfig
}

var _ Launcher = (*JailerLauncher)(nil)

// execFile returns the canonical absolute path of the Firecracker binary.
func (l *JailerLauncher) execFile() (string, error) {
	bin, err := exec.LookPath(l.Config.Binary)
	if err != nil {
		return "", err
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(bin)
}

// JailsDir returns <chroot_base>/<exec name>, the directory that holds
// one jail directory per id.
func (l *JailerLauncher) JailsDir() (string, error) {
	bin, err := l.execFile()
	if err != nil {
		return "", fmt.Errorf("vmm: firecracker binary: %w", err)
	}
	return filepath.Join(l.Jailer.ChrootBaseDir, filepath.Base(bin)), nil
}

// Processes returns the pids of the processes in the cgroups of jail id
// (every controller a launch may use). A jailed Firecracker is found this
// way even when its working directory is unreachable from the host's root
// (after pivot_root).
func (l *JailerLauncher) Processes(id string) ([]int, error) {
	j, err := l.Jail(id, Limits{VCPUs: 1, MemoryMiB: 1})
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, cg := range j.Cgroups {
		data, err := os.ReadFile(filepath.Join(cg, "cgroup.procs"))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("vmm: processes of jail %s: %w", id, err)
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(pids, pid) {
				pids = append(pids, pid)
			}
		}
	}
	return pids, nil
}

// jailOf is Jail for optional limits (nil: none).
func (l *JailerLauncher) jailOf(id string, limits *Limits) (Jail, error) {
	if limits == nil {
		return l.Jail(id, Limits{})
	}
	return l.Jail(id, *limits)
}

// FindVMMs implements Launcher: the processes in the cgroups of jail id
// (Processes) and those working in dir whose command line carries
// "--id id" (a jailer that had not entered its chroot yet).
func (l *JailerLauncher) FindVMMs(id, dir string) ([]int, error) {
	pids, err := l.Processes(id)
	if err != nil {
		return nil, err
	}
	more, err := findInDir(id, dir)
	if err != nil {
		return nil, err
	}
	for _, pid := range more {
		if !slices.Contains(pids, pid) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Adopt implements Launcher: the VMM is jailed in the jail of req.ID
// (whose root must exist), which maps paths, holds the API socket (unless
// req names another) and is removed, with the cgroups of req.Limits, once
// the adopted VMM has ended.
func (l *JailerLauncher) Adopt(_ context.Context, req AdoptRequest) (*Launched, error) {
	if req.Process == nil {
		return nil, fmt.Errorf("vmm: adopt %s (jailed): Process is required", req.ID)
	}
	j, err := l.jailOf(req.ID, req.Limits)
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(j.Root); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("vmm: adopt %s (jailed): jail root %s: must be an existing directory (%v)", req.ID, j.Root, err)
	}
	socket := req.APISocket
	if socket == "" {
		socket = j.HostPath(JailAPISocket)
	}
	return &Launched{
		Process:    req.Process,
		SocketPath: socket,
		Paths:      j.Paths(nil),
		Dir:        j.Root,
		Jail:       &j,
		Cleanup:    func() error { return cleanupJail(j) },
	}, nil
}

// Launch prepares a fresh jail for req.ID (Prepare; files already placed
// there by the caller stay), places req.Files and a configured seccomp
// filter in it, creates the log and metrics files owned by the jail, and
// starts the jailer in its own session with stdout+stderr appended to
// req.ConsolePath. Firecracker gets --api-sock /run/firecracker.socket,
// --log-path /firecracker.log and --metrics-path /firecracker.metrics
// (when the request asks for a log or metrics); req's own socket, log and
// metrics paths are not used. With NewPIDNS the jailer's exit is awaited
// and Firecracker attached through its pid file (its exit status is then
// unknown). Launch returns once the API answers; on any failure the
// process is killed and the jail and cgroups removed.
func (l *JailerLauncher) Launch(ctx context.Context, req LaunchRequest) (_ *Launched, err error) {
	fail := func(err error) (*Launched, error) { return nil, fmt.Errorf("vmm: launch %s (jailed): %w", req.ID, err) }
	if err := l.Config.Validate(); err != nil {
		return fail(err)
	}
	if err := l.Jailer.Validate(); err != nil {
		return fail(err)
	}
	if req.Dir == "" || req.ConsolePath == "" {
		return fail(errors.New("Dir and ConsolePath are required"))
	}
	j, err := l.jailOf(req.ID, req.Limits)
	if err != nil {
		return nil, err
	}
	limits := Limits{}
	if req.Limits != nil {
		limits = *req.Limits
	}
	bin, err := l.execFile()
	if err != nil {
		return fail(fmt.Errorf("firecracker binary: %w", err))
	}
	jailer, err := exec.LookPath(l.Jailer.Binary)
	if err != nil {
		return fail(fmt.Errorf("jailer binary: %w", err))
	}
	if jailer, err = filepath.Abs(jailer); err != nil {
		return fail(err)
	}
	if err := l.prepare(j); err != nil {
		return fail(err)
	}
	var proc *Process
	defer func() {
		if err == nil {
			return
		}
		if proc != nil {
			if !proc.Exited() {
				_ = proc.Kill()
			}
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
			_, _ = proc.Wait(cctx)
			cancel()
			_ = proc.Close()
		}
		if cerr := cleanupJail(j); cerr != nil {
			err = fmt.Errorf("%w (and %v)", err, cerr)
		}
	}()

	var files []JailFile
	for _, f := range req.Files {
		if f.HostPath == "" {
			continue
		}
		if _, err := j.Paths(nil)(f.HostPath); err == nil && filepath.IsAbs(f.HostPath) {
			continue // already inside the jail
		}
		if err := PlaceFile(ctx, j, f.HostPath, j.HostPath(f.JailName)); err != nil {
			return fail(err)
		}
		files = append(files, f)
	}
	cfg := l.Config
	if cfg.SeccompFilter != "" {
		if err := PlaceFile(ctx, j, cfg.SeccompFilter, j.HostPath(JailSeccompFilter)); err != nil {
			return fail(err)
		}
		cfg.SeccompFilter = JailSeccompFilter
	}
	inv := Invocation{ID: req.ID, APISocket: JailAPISocket, LogLevel: req.LogLevel}
	var logPath, metricsPath string
	if req.LogPath != "" {
		inv.LogPath, logPath = JailLogPath, j.HostPath(JailLogPath)
		if err := createOwned(j, logPath); err != nil {
			return fail(fmt.Errorf("log file: %w", err))
		}
	}
	if req.MetricsPath != "" {
		inv.MetricsPath, metricsPath = JailMetricsPath, j.HostPath(JailMetricsPath)
		if err := createOwned(j, metricsPath); err != nil {
			return fail(fmt.Errorf("metrics file: %w", err))
		}
	}
	fcArgs, err := buildArgs(cfg, inv, false)
	if err != nil {
		return fail(err)
	}
	netns := req.NetNS
	if netns == "" {
		netns = l.Jailer.NetNS
	}
	args, err := JailerArgs(l.Jailer, JailInvocation{
		ID: req.ID, ExecFile: bin, NetNS: netns,
		Cgroups: CgroupSettings(l.Jailer.cgroupVersion(), limits), FirecrackerArgs: fcArgs,
	})
	if err != nil {
		return fail(err)
	}
	socket := j.HostPath(JailAPISocket)
	if err := removeFile(socket); err != nil {
		return fail(fmt.Errorf("removing stale API socket: %w", err))
	}
	timeout := l.Config.SocketTimeout
	if timeout == 0 {
		timeout = DefaultSocketTimeout
	}
	proc, err = startProcess(jailer, args, req.Dir, req.ConsolePath, "", childEnv(l.Config.Env))
	if err != nil {
		return fail(err)
	}
	if l.Jailer.NewPIDNS {
		// The jailer exits 0 once Firecracker runs in the new namespace,
		// leaving its pid in the pid file.
		wctx, cancel := context.WithTimeout(ctx, timeout)
		st, werr := proc.Wait(wctx)
		cancel()
		if werr != nil {
			return fail(fmt.Errorf("waiting for the jailer: %w", werr))
		}
		_ = proc.Close()
		proc = nil
		if !st.Known || st.Code != 0 || st.Signal != 0 {
			return fail(fmt.Errorf("the jailer failed (%s); console tail:\n%s", st, consoleTail(req.ConsolePath)))
		}
		pidFile := filepath.Join(j.Root, filepath.Base(bin)+".pid")
		b, rerr := os.ReadFile(pidFile)
		if rerr != nil {
			return fail(fmt.Errorf("reading the pid file: %w", rerr))
		}
		pid, perr := strconv.Atoi(strings.TrimSpace(string(b)))
		if perr != nil || pid <= 0 {
			return fail(fmt.Errorf("pid file %s: bad content %q", pidFile, b))
		}
		if proc, err = Attach(pid); err != nil {
			return fail(err)
		}
	}
	if err := waitSocket(ctx, proc, socket, timeout); err != nil {
		if proc.Exited() {
			st, _ := proc.Wait(context.Background())
			err = fmt.Errorf("the jailer or firecracker exited before the API socket was ready (%s); console tail:\n%s",
				st, consoleTail(req.ConsolePath))
		}
		return fail(err)
	}
	if err := restrictJail(j.Root); err != nil {
		return fail(err)
	}
	return &Launched{
		Process:     proc,
		SocketPath:  socket,
		Paths:       j.Paths(files),
		Dir:         j.Root,
		LogPath:     logPath,
		MetricsPath: metricsPath,
		Jail:        &j,
		Cleanup:     func() error { return cleanupJail(j) },
	}, nil
}
