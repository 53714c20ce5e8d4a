package jailemu_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

const testUID, testGID = 1000, 1000

// env is what one jailed-run test needs.
type env struct {
	jailer, fc string
	base       string
	parent     string // cgroup parent, unique per test process
}

func setup(t *testing.T) *env {
	t.Helper()
	testutil.RequiresRoot(t)
	e := &env{
		jailer: testutil.Binary(t, "jailer-emulator"),
		fc:     testutil.Emulator(t),
		base:   testutil.ShortDir(t),
		parent: fmt.Sprintf("vmm-test-%d", os.Getpid()),
	}
	testutil.NoProcessesLeft(t, e.jailer)
	return e
}

func (e *env) root(id string) string {
	return filepath.Join(e.base, filepath.Base(e.fc), id, "root")
}

// jailArgs builds a jailer command line for id.
func (e *env) jailArgs(id string, extra ...string) []string {
	args := []string{"--id", id, "--exec-file", e.fc, "--uid", strconv.Itoa(testUID), "--gid", strconv.Itoa(testGID),
		"--chroot-base-dir", e.base, "--parent-cgroup", e.parent}
	args = append(args, extra...)
	return append(args, "--", "--api-sock", "/run/firecracker.socket")
}

// cleanupJail removes the jail and the cgroups of id once the VMM is gone.
func (e *env) cleanupJail(t *testing.T, id string) {
	t.Cleanup(func() {
		os.RemoveAll(filepath.Join(e.base, filepath.Base(e.fc), id))
		for _, ctrl := range []string{"cpu", "memory", "unified"} {
			for _, d := range []string{filepath.Join("/sys/fs/cgroup", ctrl, e.parent, id), filepath.Join("/sys/fs/cgroup", ctrl, e.parent)} {
				rmdirRetry(d)
			}
		}
	})
}

func rmdirRetry(d string) {
	for i := 0; i < 50; i++ {
		err := os.Remove(d)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// killPid kills pid and waits until it is gone (reaping it when it is our
// child through the subreaper setting).
func killPid(pid int) {
	_ = unix.Kill(pid, unix.SIGKILL)
	for i := 0; i < 250; i++ {
		var ws unix.WaitStatus
		if wp, _ := unix.Wait4(pid, &ws, unix.WNOHANG, nil); wp == pid {
			return
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitFile(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return
		}
	}
	t.Fatalf("%s did not appear", path)
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	waitFile(t, path)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.HasSuffix(b, []byte("\n")) {
		t.Errorf("pid file %q ends with a newline", b)
	}
	pid, err := strconv.Atoi(string(b))
	if err != nil {
		t.Fatalf("pid file %q: %v", b, err)
	}
	return pid
}

// getRoot sends GET / over the unix socket and returns the response.
func getRoot(t *testing.T, sock string) string {
	t.Helper()
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	var out []byte
	for {
		n, err := c.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil || bytes.Contains(out, []byte("}")) {
			break
		}
	}
	return string(out)
}

// checkJailed verifies that pid runs /<exec> chrooted in root as the test
// uid/gid.
func checkJailed(t *testing.T, pid int, root string) {
	t.Helper()
	var want, got unix.Stat_t
	if err := unix.Stat(root, &want); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(fmt.Sprintf("/proc/%d/root", pid), &got); err != nil {
		t.Fatal(err)
	}
	if got.Dev != want.Dev || got.Ino != want.Ino {
		t.Errorf("/proc/%d/root is %d:%d, want the jail %s (%d:%d)", pid, got.Dev, got.Ino, root, want.Dev, want.Ino)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) == 5 && (f[0] == "Uid:" || f[0] == "Gid:"):
			id := strconv.Itoa(testUID)
			if f[0] == "Gid:" {
				id = strconv.Itoa(testGID)
			}
			if f[1] != id || f[2] != id || f[3] != id || f[4] != id {
				t.Errorf("%s", l)
			}
		case len(f) > 0 && f[0] == "Groups:" && len(f) != 1:
			t.Errorf("supplementary groups kept: %s", l)
		}
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if len(args) < 9 || args[0] != "/firecracker-emulator" || args[1] != "--id" || args[3] != "--start-time-us" ||
		args[5] != "--start-time-cpu-us" || args[7] != "--parent-cpu-time-us" {
		t.Errorf("argv %q", args)
	}
	environ, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	for _, kv := range strings.Split(strings.TrimRight(string(environ), "\x00"), "\x00") {
		if kv != "" && !strings.HasPrefix(kv, "FCEMU_") {
			t.Errorf("environment variable %q passed to firecracker", kv)
		}
	}
	for _, f := range []string{"dev/kvm", "dev/net/tun", "dev/urandom", "firecracker-emulator", "run", "dev"} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, f), &st); err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if st.Uid != testUID || st.Gid != testGID {
			t.Errorf("%s owned by %d:%d", f, st.Uid, st.Gid)
		}
	}
	var kvm unix.Stat_t
	if err := unix.Stat(filepath.Join(root, "dev/kvm"), &kvm); err == nil &&
		(kvm.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(kvm.Rdev) != 10 || unix.Minor(kvm.Rdev) != 232 || kvm.Mode&0o777 != 0o600) {
		t.Errorf("/dev/kvm mode %o rdev %d:%d", kvm.Mode, unix.Major(kvm.Rdev), unix.Minor(kvm.Rdev))
	}
}

func cgroupOf(t *testing.T, pid int, ctrl string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) == 3 && (f[1] == ctrl || ctrl == "" && f[0] == "0") {
			return f[2]
		}
	}
	return ""
}

// TestJailedRun runs the Firecracker emulator in place under the jailer
// with cgroup v1 limits and checks every property of the jail.
func TestJailedRun(t *testing.T) {
	e := setup(t)
	const id = "jailrun1"
	e.cleanupJail(t, id)
	cmd := exec.Command(e.jailer, e.jailArgs(id,
		"--cgroup", "cpu.cfs_quota_us=50000", "--cgroup", "memory.limit_in_bytes=134217728",
		"--resource-limit", "no-file=1024")...)
	cmd.Env = append(os.Environ(), "FCEMU_SKIP_TAP=1")
	var stderr testutil.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	root := e.root(id)
	sock := filepath.Join(root, "run", "firecracker.socket")
	waitFile(t, sock)

	if pid := readPid(t, filepath.Join(root, "firecracker-emulator.pid")); pid != cmd.Process.Pid {
		t.Errorf("pid file %d, jailer pid %d (exec in place)", pid, cmd.Process.Pid)
	}
	pid := cmd.Process.Pid
	checkJailed(t, pid, root)
	if resp := getRoot(t, sock); !strings.Contains(resp, "200") || !strings.Contains(resp, `"id":"`+id+`"`) {
		t.Errorf("GET / = %q", resp)
	}
	wantCg := "/" + e.parent + "/" + id
	for ctrl, f := range map[string]string{"cpu": "cpu.cfs_quota_us", "memory": "memory.limit_in_bytes"} {
		if got := cgroupOf(t, pid, ctrl); got != wantCg {
			t.Errorf("%s cgroup %q, want %q", ctrl, got, wantCg)
		}
		v, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", ctrl, e.parent, id, f))
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"cpu": "50000", "memory": "134217728"}[ctrl]
		if strings.TrimSpace(string(v)) != want {
			t.Errorf("%s = %q, want %s", f, v, want)
		}
	}
	limits, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if !regexpLine(string(limits), "Max open files", "1024") {
		t.Errorf("limits:\n%s", limits)
	}

	// The same id again: the jail is not fresh.
	out, err := exec.Command(e.jailer, e.jailArgs(id)...).CombinedOutput()
	if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "not fresh") {
		t.Errorf("second run: %v %q", err, out)
	}

	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if t.Failed() {
		t.Logf("jailer stderr: %s", stderr.String())
	}
}

func regexpLine(text, prefix, value string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			f := strings.Fields(strings.TrimPrefix(l, prefix))
			return len(f) >= 2 && f[0] == value && f[1] == value
		}
	}
	return false
}

// TestJailedNetnsNewPidNs joins a test network namespace and a new PID
// namespace; the jailer exits 0 and the pid file names the VMM. It also
// takes the cgroup v2 path without --cgroup (parent missing: no-op).
func TestJailedNetnsNewPidNs(t *testing.T) {
	e := setup(t)
	const id = "jailrun2"
	e.cleanupJail(t, id)
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("subreaper: %v", err)
	}
	ns := fmt.Sprintf("vmmjt-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Skipf("skipping: cannot create a network namespace: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", ns).Run() })
	nsPath := "/run/netns/" + ns

	cmd := exec.Command(e.jailer, e.jailArgs(id, "--netns", nsPath, "--new-pid-ns", "--cgroup-version", "2")...)
	cmd.Env = []string{"FCEMU_SKIP_TAP=1", "SECRET=x"}
	// The VMM inherits the jailer's stdio: a pipe would stay open after the
	// jailer exits, so capture into a file.
	logf, err := os.Create(filepath.Join(e.base, "jailer.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(logf.Name())
		t.Fatalf("jailer: %v %s", err, out)
	}
	root := e.root(id)
	pid := readPid(t, filepath.Join(root, "firecracker-emulator.pid"))
	defer killPid(pid)
	sock := filepath.Join(root, "run", "firecracker.socket")
	waitFile(t, sock)
	checkJailed(t, pid, root)
	if resp := getRoot(t, sock); !strings.Contains(resp, `"id":"`+id+`"`) {
		t.Errorf("GET / = %q", resp)
	}
	var nsSt, procSt unix.Stat_t
	if err := unix.Stat(nsPath, &nsSt); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &procSt); err != nil {
		t.Fatal(err)
	}
	if nsSt.Ino != procSt.Ino {
		t.Errorf("net ns inode %d, want %d", procSt.Ino, nsSt.Ino)
	}
	var selfPid, vmmPid unix.Stat_t
	_ = unix.Stat("/proc/self/ns/pid", &selfPid)
	_ = unix.Stat(fmt.Sprintf("/proc/%d/ns/pid", pid), &vmmPid)
	if selfPid.Ino == vmmPid.Ino {
		t.Error("the VMM is in the test's PID namespace")
	}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if !strings.Contains(string(status), "NSpid:\t"+strconv.Itoa(pid)+"\t1\n") {
		t.Errorf("VMM is not pid 1 of its namespace:\n%s", status)
	}
}

// TestJailerErrors checks failures that exit 1 with a message.
func TestJailerErrors(t *testing.T) {
	e := setup(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"missing exec file", []string{"--id", "e1", "--exec-file", "/nonexistent/fc", "--uid", "1000", "--gid", "1000", "--chroot-base-dir", e.base}, "Failed to canonicalize"},
		{"bad id", []string{"--id", "bad_id", "--exec-file", e.fc, "--uid", "1000", "--gid", "1000", "--chroot-base-dir", e.base}, "Invalid instance ID"},
		{"bad cgroup", e.jailArgs("e3", "--cgroup", "cpu.cfs_quota_us"), "Invalid format for cgroups"},
		{"unknown cgroup file", e.jailArgs("e4", "--cgroup", "cpu.no_such_file=1"), "Cgroup error"},
		{"v2 controller missing", e.jailArgs("e5", "--cgroup-version", "2", "--cgroup", "memory.max=1"), "not available"},
		{"netns missing", e.jailArgs("e6", "--netns", "/run/netns/vmm-does-not-exist"), "network namespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.cleanupJail(t, tt.args[1])
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(e.jailer, tt.args...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("exit: %v (stderr %q)", err, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("stderr %q, want %q", stderr.String(), tt.want)
			}
		})
	}
	out, err := exec.Command(e.jailer, "--version").Output()
	if err != nil || !strings.HasPrefix(string(out), "Jailer v1.16.1") {
		t.Errorf("--version: %v %q", err, out)
	}
}
