package vmm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/disk"
)

// Jail file names: the paths Firecracker is given inside the chroot.
const (
	// JailAPISocket is Firecracker's --api-sock inside the jail.
	JailAPISocket = "/run/firecracker.socket"
	// JailLogPath is Firecracker's --log-path inside the jail.
	JailLogPath = "/firecracker.log"
	// JailMetricsPath is Firecracker's --metrics-path inside the jail.
	JailMetricsPath = "/firecracker.metrics"
	// JailSeccompFilter is where a configured seccomp filter is placed.
	JailSeccompFilter = "/seccomp.bpf"
	// JailKernelName and JailInitrdName are the names vmm.Start gives the
	// kernel and the initrd inside a jail.
	JailKernelName = "vmlinux"
	JailInitrdName = "initrd"
)

// Cgroup limit constants: a vCPU is one CPU period's worth of quota and the
// VMM gets this much memory on top of the guest's.
const (
	cgroupCPUPeriod      = 100000
	cgroupMemOverheadMiB = 64
)

// cgroupRemoveTimeout bounds the retries of rmdir on a cgroup that the
// kernel has not released yet.
const cgroupRemoveTimeout = 2 * time.Second

// JailerConfig holds the jailer's own options (the [firecracker.jailer]
// section). The Firecracker binary it runs is the launcher's Config.Binary.
type JailerConfig struct {
	// Binary is the jailer binary (absolute or PATH-relative). Required.
	Binary string
	// UID and GID are the identity Firecracker runs as (>= 0).
	UID, GID int
	// ChrootBaseDir is the jailer's --chroot-base-dir (absolute, must
	// exist). Required.
	ChrootBaseDir string
	// NetNS is a network namespace path used when a launch names none.
	NetNS string
	// NewPIDNS passes --new-pid-ns: Firecracker becomes pid 1 of a new PID
	// namespace and is attached through its pid file.
	NewPIDNS bool
	// CgroupVersion is "1" or "2"; empty means "2".
	CgroupVersion string
	// ParentCgroup is --parent-cgroup (relative); empty means the jailer's
	// default, the exec file's name.
	ParentCgroup string
	// ResourceLimits are --resource-limit values (fsize=N, no-file=N).
	ResourceLimits []string
	// MountInfo is the mountinfo file cgroup mounts are found in; empty
	// means /proc/self/mountinfo (tests point it elsewhere).
	MountInfo string
}

// cgroupVersion returns the effective cgroup version.
func (c JailerConfig) cgroupVersion() string {
	if c.CgroupVersion == "" {
		return "2"
	}
	return c.CgroupVersion
}

// Validate checks the jailer options (not the file system).
func (c JailerConfig) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Binary == "" {
		add("jailer binary: required")
	}
	if c.UID < 0 || c.GID < 0 {
		add("jailer uid %d / gid %d: must not be negative", c.UID, c.GID)
	}
	if c.ChrootBaseDir == "" || !filepath.IsAbs(c.ChrootBaseDir) {
		add("chroot base dir %q: an absolute path is required", c.ChrootBaseDir)
	}
	if v := c.cgroupVersion(); v != "1" && v != "2" {
		add("cgroup version %q: want 1 or 2", c.CgroupVersion)
	}
	if c.ParentCgroup != "" {
		if err := validateRelPath(c.ParentCgroup); err != nil {
			add("parent cgroup %q: %v", c.ParentCgroup, err)
		}
	}
	for _, r := range c.ResourceLimits {
		k, v, ok := strings.Cut(r, "=")
		if _, err := strconv.ParseUint(v, 10, 64); !ok || (k != "fsize" && k != "no-file") || err != nil {
			add("resource limit %q: want fsize=N or no-file=N", r)
		}
	}
	return errors.Join(errs...)
}

// validateRelPath checks a relative path without "." or ".." components.
func validateRelPath(p string) error {
	if filepath.IsAbs(p) {
		return errors.New("must be relative")
	}
	for _, c := range strings.Split(p, "/") {
		if c == "" || c == "." || c == ".." {
			return errors.New(`must not contain empty, "." or ".." components`)
		}
	}
	return nil
}

// Limits are a VMM's resource limits, enforced through cgroups by the
// jailer. Zero fields are not limited.
type Limits struct {
	// VCPUs becomes a CPU quota of VCPUs whole CPUs.
	VCPUs int
	// MemoryMiB becomes a memory limit of MemoryMiB plus 64 MiB of VMM
	// overhead.
	MemoryMiB int
}

// CgroupSettings returns the --cgroup values (file=value) for limits under
// cgroup version "1" or "2":
//
//	v1: cpu.cfs_period_us=100000 cpu.cfs_quota_us=<vcpus*100000>
//	    memory.limit_in_bytes=<(mem+64) MiB>
//	v2: cpu.max=<vcpus*100000> 100000  memory.max=<(mem+64) MiB>
func CgroupSettings(version string, l Limits) []string {
	var out []string
	mem := strconv.FormatInt(int64(l.MemoryMiB+cgroupMemOverheadMiB)<<20, 10)
	quota := strconv.Itoa(l.VCPUs * cgroupCPUPeriod)
	if version == "1" {
		if l.VCPUs > 0 {
			out = append(out, "cpu.cfs_period_us="+strconv.Itoa(cgroupCPUPeriod), "cpu.cfs_quota_us="+quota)
		}
		if l.MemoryMiB > 0 {
			out = append(out, "memory.limit_in_bytes="+mem)
		}
		return out
	}
	if l.VCPUs > 0 {
		out = append(out, "cpu.max="+quota+" "+strconv.Itoa(cgroupCPUPeriod))
	}
	if l.MemoryMiB > 0 {
		out = append(out, "memory.max="+mem)
	}
	return out
}

// JailInvocation is the per-launch part of a jailer command line.
type JailInvocation struct {
	// ID is the jail id (--id), also Firecracker's instance id.
	ID string
	// ExecFile is the absolute path of the Firecracker binary.
	ExecFile string
	// NetNS is the network namespace to join (--netns); optional.
	NetNS string
	// Cgroups are --cgroup values (file=value).
	Cgroups []string
	// FirecrackerArgs follow "--"; they must not contain --id.
	FirecrackerArgs []string
}

// JailerArgs returns the jailer's arguments (without argv[0]) in this
// stable order:
//
//	--id ID --exec-file BIN --uid U --gid G --chroot-base-dir B
//	[--netns P] [--new-pid-ns] --cgroup-version V [--parent-cgroup P]
//	[--cgroup k=v]... [--resource-limit r]... -- FIRECRACKER-ARGS
//
// --daemonize is never used: the launcher keeps the process as its child.
func JailerArgs(cfg JailerConfig, inv JailInvocation) ([]string, error) {
	var errs []error
	if err := cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := ValidateInstanceID(inv.ID); err != nil {
		errs = append(errs, err)
	}
	if !filepath.IsAbs(inv.ExecFile) {
		errs = append(errs, fmt.Errorf("exec file %q: an absolute path is required", inv.ExecFile))
	}
	for _, c := range inv.Cgroups {
		k, v, ok := strings.Cut(c, "=")
		if !ok || v == "" || k == "" || strings.Contains(k, "/") || k == "." || k == ".." {
			errs = append(errs, fmt.Errorf("cgroup setting %q: want file=value", c))
		}
	}
	if slices.Contains(inv.FirecrackerArgs, "--id") {
		errs = append(errs, errors.New("firecracker arguments must not contain --id under the jailer"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("vmm: jailer arguments: %w", err)
	}
	args := []string{
		"--id", inv.ID, "--exec-file", inv.ExecFile,
		"--uid", strconv.Itoa(cfg.UID), "--gid", strconv.Itoa(cfg.GID),
		"--chroot-base-dir", cfg.ChrootBaseDir,
	}
	if inv.NetNS != "" {
		args = append(args, "--netns", inv.NetNS)
	}
	if cfg.NewPIDNS {
		args = append(args, "--new-pid-ns")
	}
	args = append(args, "--cgroup-version", cfg.cgroupVersion())
	if cfg.ParentCgroup != "" {
		args = append(args, "--parent-cgroup", cfg.ParentCgroup)
	}
	for _, c := range inv.Cgroups {
		args = append(args, "--cgroup", c)
	}
	for _, r := range cfg.ResourceLimits {
		args = append(args, "--resource-limit", r)
	}
	args = append(args, "--")
	return append(args, inv.FirecrackerArgs...), nil
}

// Jail describes one VMM's jail on the host.
type Jail struct {
	// ID is the jail id.
	ID string
	// Dir is <chroot_base>/<exec name>/<id>, removed by cleanup.
	Dir string
	// Root is the chroot: Dir/root.
	Root string
	// UID and GID own everything in Root.
	UID, GID int
	// Cgroups are the cgroup directories the jailer creates for this
	// launch's limits (one per v1 controller, or the v2 one).
	Cgroups []string
	// Cgroup is the cgroup path shown to users:
	// <mount>/<parent_cgroup>/<id> (of the first v1 controller, cpu, or
	// the unified hierarchy).
	Cgroup string
}

// HostPath returns the host path of a path inside the jail ("/run/x" or
// the relative "x", both resolved from the jail's root).
func (j Jail) HostPath(jailPath string) string {
	return filepath.Join(j.Root, strings.TrimPrefix(jailPath, "/"))
}

// JailFile is a host file a launch places in the jail.
type JailFile struct {
	// HostPath is the file on the host.
	HostPath string
	// JailName is its name in the jail's root directory.
	JailName string
}

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

// Jail returns the jail of id and, for limits, its cgroup directories.
func (l *JailerLauncher) Jail(id string, limits Limits) (Jail, error) {
	if err := ValidateInstanceID(id); err != nil {
		return Jail{}, fmt.Errorf("vmm: jail: %w", err)
	}
	bin, err := l.execFile()
	if err != nil {
		return Jail{}, fmt.Errorf("vmm: jail %s: firecracker binary: %w", id, err)
	}
	exe := filepath.Base(bin)
	dir := filepath.Join(l.Jailer.ChrootBaseDir, exe, id)
	j := Jail{ID: id, Dir: dir, Root: filepath.Join(dir, "root"), UID: l.Jailer.UID, GID: l.Jailer.GID}
	parent := l.Jailer.ParentCgroup
	if parent == "" {
		parent = exe
	}
	settings := CgroupSettings(l.Jailer.cgroupVersion(), limits)
	mountinfo := l.Jailer.MountInfo
	if mountinfo == "" {
		mountinfo = "/proc/self/mountinfo"
	}
	if l.Jailer.cgroupVersion() == "1" {
		var controllers []string
		for _, s := range settings {
			c, _, _ := strings.Cut(s, ".")
			if !slices.Contains(controllers, c) {
				controllers = append(controllers, c)
			}
		}
		for _, c := range controllers {
			mnt, err := cgroupMount(mountinfo, c)
			if err != nil {
				return Jail{}, fmt.Errorf("vmm: jail %s: %w", id, err)
			}
			j.Cgroups = append(j.Cgroups, filepath.Join(mnt, parent, id))
		}
	} else if mnt, err := cgroupMount(mountinfo, ""); err == nil {
		if len(settings) > 0 {
			j.Cgroups = []string{filepath.Join(mnt, parent, id)}
		}
		j.Cgroup = filepath.Join(mnt, parent, id)
	} else if len(settings) > 0 {
		return Jail{}, fmt.Errorf("vmm: jail %s: %w", id, err)
	}
	if len(j.Cgroups) > 0 {
		j.Cgroup = j.Cgroups[0]
	}
	return j, nil
}

// cgroupMount finds the mount point of the v1 hierarchy with controller
// in mountinfo, or of the cgroup2 hierarchy when controller is empty.
func cgroupMount(mountinfo, controller string) (string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return "", fmt.Errorf("finding cgroup mounts: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(tail) < 3 {
			continue
		}
		switch {
		case controller == "" && tail[0] == "cgroup2":
			return fields[4], nil
		case controller != "" && tail[0] == "cgroup" && slices.Contains(strings.Split(tail[2], ","), controller):
			return fields[4], nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("reading %s: %w", mountinfo, err)
	}
	if controller == "" {
		return "", errors.New("no cgroup2 hierarchy is mounted")
	}
	return "", fmt.Errorf("no cgroup v1 hierarchy with the %s controller is mounted", controller)
}

// Prepare creates the jail's root directory for id (idempotent): Dir as
// root-only 0700 directories, Root 0700 owned by the jail's uid:gid. Files
// may then be placed in it (PlaceFile) before Launch.
func (l *JailerLauncher) Prepare(id string) (Jail, error) {
	j, err := l.Jail(id, Limits{})
	if err != nil {
		return Jail{}, err
	}
	if err := l.prepare(j); err != nil {
		return Jail{}, fmt.Errorf("vmm: jail %s: %w", id, err)
	}
	return j, nil
}

func (l *JailerLauncher) prepare(j Jail) error {
	st, err := os.Stat(l.Jailer.ChrootBaseDir)
	if err != nil || !st.IsDir() {
		return fmt.Errorf("chroot base dir %s: must be an existing directory (%v)", l.Jailer.ChrootBaseDir, err)
	}
	if err := os.MkdirAll(j.Dir, 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(j.Root, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if err := os.Lchown(j.Root, j.UID, j.GID); err != nil {
		return err
	}
	return os.Chmod(j.Root, 0o700)
}

// PlaceFile gives the jail its own copy of src as dst (a host path inside
// j.Root): a reflink where the filesystem supports it, else a sparse copy,
// owned by the jail's uid:gid with mode 0600. It never hard-links: the
// jail's user must not own (and so be able to change) files that live
// outside the jail, such as the shared kernel image.
func PlaceFile(ctx context.Context, j Jail, src, dst string) error {
	if err := disk.Clone(ctx, src, dst); err != nil {
		return fmt.Errorf("placing %s in the jail: %w", src, err)
	}
	if err := os.Lchown(dst, j.UID, j.GID); err != nil {
		return fmt.Errorf("placing %s in the jail: %w", src, err)
	}
	if err := os.Chmod(dst, 0o600); err != nil {
		return fmt.Errorf("placing %s in the jail: %w", src, err)
	}
	return nil
}

// createOwned creates an empty file owned by the jail (or truncates it).
func createOwned(j Jail, path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	f.Close()
	if err := os.Lchown(path, j.UID, j.GID); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}

// Paths returns the PathMapper of a jail: a placed file's host path maps to
// its name in the jail's root; a host path inside the root maps to the
// path below it ("/..."); a relative path is returned unchanged
// (Firecracker's working directory is the jail's root); anything else is
// refused.
func (j Jail) Paths(files []JailFile) PathMapper {
	placed := map[string]string{}
	for _, f := range files {
		placed[filepath.Clean(f.HostPath)] = "/" + f.JailName
	}
	root := filepath.Clean(j.Root)
	return func(hostPath string) (string, error) {
		if hostPath == "" {
			return "", errors.New("empty path")
		}
		if !filepath.IsAbs(hostPath) {
			return hostPath, nil
		}
		p := filepath.Clean(hostPath)
		if in, ok := placed[p]; ok {
			return in, nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			return "", fmt.Errorf("path %s is outside the jail %s: Firecracker cannot reach it", hostPath, root)
		}
		if rel == "." {
			return "/", nil
		}
		return "/" + rel, nil
	}
}

// restrictJail takes every permission for other users away from the files
// in root: the jailer copies the exec file with its mode and writes the pid
// file world-readable, and Firecracker creates its sockets with the
// inherited umask. Symbolic links are left alone.
func restrictJail(root string) error {
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // e.g. a socket removed meanwhile
			}
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			if errors.Is(err, syscall.ENOENT) {
				return nil
			}
			return err
		}
		if st.Mode&0o007 == 0 {
			return nil
		}
		if err := syscall.Chmod(p, st.Mode&0o7770); err != nil && !errors.Is(err, syscall.ENOENT) {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("restricting the jail's permissions: %w", err)
	}
	return nil
}

// Cleanup removes the jail of id (<chroot_base>/<exec name>/<id>) and the
// cgroup directories of limits. Call it once the VMM has exited; it is
// idempotent.
func (l *JailerLauncher) Cleanup(id string, limits Limits) error {
	j, err := l.Jail(id, limits)
	if err != nil {
		return err
	}
	return cleanupJail(j)
}

// cleanupJail removes j's directory and cgroups (rmdir, retried briefly
// while the kernel releases a cgroup whose last task just exited).
func cleanupJail(j Jail) error {
	var errs []error
	if err := os.RemoveAll(j.Dir); err != nil {
		errs = append(errs, fmt.Errorf("removing jail %s: %w", j.Dir, err))
	}
	for _, cg := range j.Cgroups {
		deadline := time.Now().Add(cgroupRemoveTimeout)
		for {
			err := syscall.Rmdir(cg)
			if err == nil || errors.Is(err, syscall.ENOENT) {
				break
			}
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", cg, err))
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("vmm: cleanup of jail %s: %w", j.ID, err)
	}
	return nil
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
	limits := Limits{}
	if req.Limits != nil {
		limits = *req.Limits
	}
	j, err := l.Jail(req.ID, limits)
	if err != nil {
		return nil, err
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
	if err := removeSocket(socket); err != nil {
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
