package jailemu

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Environment variables of the re-executed child (--new-pid-ns,
// --daemonize). They are not passed on to Firecracker.
const (
	envStage    = "JAILEMU_STAGE"
	stageChild  = "child"
	envStartUS  = "JAILEMU_START_US"
	envStartCPU = "JAILEMU_START_CPU_US"
)

// helpText is printed by --help.
const helpText = `Jailer v` + Version + `

Usage: jailer --id <id> --exec-file <path> --uid <uid> --gid <gid> [options] [-- <firecracker args>]

Arguments:
  --id <id>                      Jail ID (1-64 alphanumeric characters or '-').
  --exec-file <path>             File path to exec into.
  --uid <uid>                    The user identifier the jailed process will use.
  --gid <gid>                    The group identifier the jailed process will use.
  --chroot-base-dir <dir>        The base folder where chroot jails are built. [default: /srv/jailer]
  --netns <path>                 Path to the network namespace this microVM should join.
  --daemonize                    Daemonize the jailer before exec'ing into Firecracker.
  --new-pid-ns                   Exec into a new PID namespace.
  --cgroup <file>=<value>        Cgroup and value to be set by the jailer. Repeatable.
  --cgroup-version <1|2>         Cgroup version. [default: 1]
  --parent-cgroup <path>         Parent cgroup in which the cgroup of this microVM will be placed.
  --resource-limit <res>=<val>   Resource limit: fsize or no-file. Repeatable.
  --version                      Print the binary version number.
  --help                         Show the help message.
`

// Main runs the jailer emulator with args (without the program name) and
// the process environment env. It returns the exit code only when it does
// not exec Firecracker.
func Main(args, env []string, stdout, stderr io.Writer) int {
	startUS, startCPU := nowUS(unix.CLOCK_MONOTONIC), nowUS(unix.CLOCK_PROCESS_CPUTIME_ID)
	child := lookupEnv(env, envStage) == stageChild
	if child {
		startUS = parseUintDefault(lookupEnv(env, envStartUS), startUS)
		startCPU = parseUintDefault(lookupEnv(env, envStartCPU), startCPU)
	}
	c, err := Parse(args)
	switch {
	case errors.Is(err, errHelp):
		fmt.Fprint(stdout, helpText)
		return 0
	case errors.Is(err, errVersion):
		fmt.Fprintf(stdout, "Jailer v%s\n", Version)
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "Arguments parsing error: %v\n", err)
		return 1
	}
	if child {
		err = enterAndExec(c, env, startUS, startCPU)
	} else {
		err = run(c, args, env, startUS, startCPU)
	}
	if err != nil {
		fmt.Fprintf(stderr, "Jailer error: %v\n", err)
		return 1
	}
	return 0
}

// run does the host-side setup and then either execs in place or starts
// the re-executed child and exits.
func run(c *Config, args, env []string, startUS, startCPU uint64) error {
	if c.Netns != "" {
		fd, err := unix.Open(c.Netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("failed to open the network namespace %s: %w", c.Netns, err)
		}
		unix.Close(fd)
	}
	if err := prepareChroot(c); err != nil {
		return err
	}
	mi, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("Cgroup error: %w", err)
	}
	m, err := readMounts(mi)
	mi.Close()
	if err != nil {
		return fmt.Errorf("Cgroup error: reading mountinfo: %w", err)
	}
	if err := setupCgroups(c, m, os.Getpid()); err != nil {
		return err
	}
	if err := setRlimits(c); err != nil {
		return err
	}
	if !c.NewPidNs && !c.Daemonize {
		if err := writePidFile(c.PidFile(), os.Getpid()); err != nil {
			return err
		}
		return enterAndExec(c, env, startUS, startCPU)
	}
	return startChild(c, args, env, startUS, startCPU)
}

// startChild re-executes this binary as the process that becomes
// Firecracker (new PID namespace and/or new session), writes its pid file
// and returns without waiting for it.
func startChild(c *Config, args, env []string, startUS, startCPU uint64) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("locating own executable: %w", err)
	}
	cmd := exec.Command(self, args...)
	cmd.Env = append(filterEnv(env, envStage, envStartUS, envStartCPU),
		envStage+"="+stageChild,
		envStartUS+"="+strconv.FormatUint(startUS, 10),
		envStartCPU+"="+strconv.FormatUint(startCPU, 10))
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if c.NewPidNs {
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWPID
	}
	if c.Daemonize {
		cmd.SysProcAttr.Setsid = true // stdio stays nil: /dev/null
	} else {
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("failed to start the jailed process: %w", err)
	}
	pid := cmd.Process.Pid
	if err := writePidFile(c.PidFile(), pid); err != nil {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
		return err
	}
	// The child outlives us on purpose; release it without waiting.
	return cmd.Process.Release()
}

// prepareChroot lays out the jail on the host file system.
func prepareChroot(c *Config) error {
	root := c.ChrootDir()
	for _, dev := range []string{"dev/kvm", "dev/net/tun", "dev/urandom"} {
		if _, err := os.Lstat(filepath.Join(root, dev)); err == nil {
			return fmt.Errorf("the jail %s is not fresh: %s already exists", c.JailDir(), "/"+dev)
		}
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fmt.Errorf("failed to create the chroot %s: %w", root, err)
	}
	for _, d := range []string{"", "dev", "dev/net", "run"} {
		p := filepath.Join(root, d)
		if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("failed to create %s: %w", p, err)
		}
		if err := os.Chmod(p, 0o700); err != nil {
			return fmt.Errorf("failed to chmod %s: %w", p, err)
		}
		if err := os.Lchown(p, int(c.UID), int(c.GID)); err != nil {
			return fmt.Errorf("failed to chown %s: %w", p, err)
		}
	}
	if err := copyExecFile(c); err != nil {
		return err
	}
	type node struct {
		path         string
		major, minor uint32
		optional     bool
	}
	nodes := []node{{"dev/kvm", 10, 232, false}, {"dev/net/tun", 10, 200, false}, {"dev/urandom", 1, 9, true}}
	var st unix.Stat_t
	if err := unix.Stat("/dev/userfaultfd", &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFCHR {
		nodes = append(nodes, node{"dev/userfaultfd", unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev)), true})
	}
	for _, n := range nodes {
		p := filepath.Join(root, n.path)
		err := unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(n.major, n.minor)))
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("the jail %s is not fresh: failed to create /%s: %w", c.JailDir(), n.path, err)
		}
		if err != nil {
			if n.optional {
				continue
			}
			return fmt.Errorf("failed to create /%s via mknod: %w", n.path, err)
		}
		if err := os.Lchown(p, int(c.UID), int(c.GID)); err != nil {
			return fmt.Errorf("failed to chown /%s: %w", n.path, err)
		}
	}
	return nil
}

// copyExecFile copies the exec file into the chroot, owned by uid:gid,
// refusing to follow a symlink or write through a hard-linked target.
func copyExecFile(c *Config) error {
	dst := filepath.Join(c.ChrootDir(), c.ExecName)
	var st unix.Stat_t
	if err := unix.Lstat(dst, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Nlink > 1 {
		return fmt.Errorf("failed to copy %s into the jail: the target %s is a hard link", c.ExecFile, dst)
	}
	src, err := os.OpenFile(c.ExecFile, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("failed to open the exec file %s: %w", c.ExecFile, err)
	}
	defer src.Close()
	sst, err := src.Stat()
	if err != nil {
		return fmt.Errorf("failed to stat the exec file %s: %w", c.ExecFile, err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, sst.Mode().Perm())
	if err != nil {
		return fmt.Errorf("failed to copy %s into the jail: %w", c.ExecFile, err)
	}
	_, err = io.Copy(out, src)
	if err == nil {
		err = out.Chmod(sst.Mode().Perm())
	}
	if err == nil {
		err = out.Chown(int(c.UID), int(c.GID))
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("failed to copy %s into the jail: %w", c.ExecFile, err)
	}
	return nil
}

func setRlimits(c *Config) error {
	if c.FsizeLimit != nil {
		if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &unix.Rlimit{Cur: *c.FsizeLimit, Max: *c.FsizeLimit}); err != nil {
			return fmt.Errorf("failed to set resource limit fsize: %w", err)
		}
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: c.NoFileLimit, Max: c.NoFileLimit}); err != nil {
		return fmt.Errorf("failed to set resource limit no-file: %w", err)
	}
	return nil
}

// writePidFile creates path exclusively and writes pid (no newline).
func writePidFile(path string, pid int) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("failed to write the pid file %s: %w", path, err)
	}
	_, err = f.WriteString(strconv.Itoa(pid))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("failed to write the pid file %s: %w", path, err)
	}
	return nil
}

// enterAndExec joins the network namespace, enters a private mount
// namespace rooted at the jail, drops privileges and execs Firecracker. All
// of it happens on one locked OS thread, the one that calls execve.
func enterAndExec(c *Config, env []string, startUS, startCPU uint64) error {
	runtime.LockOSThread()
	// Never unlocked: on error the process exits.
	if c.Netns != "" {
		fd, err := unix.Open(c.Netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("failed to open the network namespace %s: %w", c.Netns, err)
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("failed to join the network namespace %s: %w", c.Netns, err)
		}
	}
	root := c.ChrootDir()
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("failed to unshare into a new mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_PRIVATE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("failed to make / private: %w", err)
	}
	if err := unix.Mount(root, root, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("failed to bind mount %s onto itself: %w", root, err)
	}
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("failed to chdir into %s: %w", root, err)
	}
	if err := unix.PivotRoot(".", "."); err == nil {
		if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
			return fmt.Errorf("failed to detach the old root: %w", err)
		}
	} else if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("failed to pivot_root or chroot into %s: %w", root, err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("failed to chdir to / in the jail: %w", err)
	}
	// Nothing above fd 2 survives the exec (the Go runtime still uses its
	// own descriptors until then, so they are marked rather than closed).
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		markCloexec()
	}
	// Per-thread credential changes: this thread is the one that execs.
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, 0, 0, 0); e != 0 {
		return fmt.Errorf("failed to drop supplementary groups: %w", e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(c.GID), uintptr(c.GID), uintptr(c.GID)); e != 0 {
		return fmt.Errorf("failed to change gid to %d: %w", c.GID, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(c.UID), uintptr(c.UID), uintptr(c.UID)); e != 0 {
		return fmt.Errorf("failed to change uid to %d: %w", c.UID, e)
	}
	parentCPU := nowUS(unix.CLOCK_PROCESS_CPUTIME_ID) - min(startCPU, nowUS(unix.CLOCK_PROCESS_CPUTIME_ID))
	argv := append([]string{"/" + c.ExecName,
		"--id", c.ID,
		"--start-time-us", strconv.FormatUint(startUS, 10),
		"--start-time-cpu-us", strconv.FormatUint(startCPU, 10),
		"--parent-cpu-time-us", strconv.FormatUint(parentCPU, 10),
	}, c.ExtraArgs...)
	err := unix.Exec("/"+c.ExecName, argv, firecrackerEnv(env))
	return fmt.Errorf("failed to exec into /%s: %w", c.ExecName, err)
}

// markCloexec is the fallback for kernels without close_range.
func markCloexec() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}

// firecrackerEnv is the environment Firecracker gets: only FCEMU_* knobs.
func firecrackerEnv(env []string) []string {
	out := []string{}
	for _, kv := range env {
		if strings.HasPrefix(kv, "FCEMU_") {
			out = append(out, kv)
		}
	}
	return out
}

func filterEnv(env []string, drop ...string) []string {
	var out []string
next:
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		for _, d := range drop {
			if k == d {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

func lookupEnv(env []string, key string) string {
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return ""
}

func parseUintDefault(s string, def uint64) uint64 {
	if v, err := strconv.ParseUint(s, 10, 64); err == nil {
		return v
	}
	return def
}

func nowUS(clock int32) uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(clock, &ts); err != nil {
		return 0
	}
	return uint64(ts.Sec)*1_000_000 + uint64(ts.Nsec)/1000
}
