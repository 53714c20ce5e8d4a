package integration

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// jailUID and jailGID are the identity jailed VMMs run as in the tests.
const jailUID, jailGID = 64123, 64123

// jailerSection returns a [firecracker.jailer] section for a test: a chroot
// base under the test's directory and a cgroup v1 parent of its own, which
// the test removes afterwards. emuEnv reaches the jailed emulator through a
// wrapper around the jailer emulator (the jailer passes FCEMU_* through).
func jailerSection(t *testing.T, dir string, emuEnv ...string) (section, base, parent string) {
	t.Helper()
	testutil.RequiresRoot(t)
	if _, err := os.Stat("/sys/fs/cgroup/cpu"); err != nil {
		t.Skip("skipping: the jailed tests use cgroup v1 controllers (cpu, memory), which this host lacks")
	}
	jailer := testutil.Binary(t, "jailer-emulator")
	if len(emuEnv) > 0 {
		wrapper := filepath.Join(dir, "jailer-wrapper")
		script := "#!/bin/sh\nexec env"
		for _, kv := range emuEnv {
			script += fmt.Sprintf(" %q", kv)
		}
		script += fmt.Sprintf(" %q \"$@\"\n", jailer)
		if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		jailer = wrapper
	}
	base = filepath.Join(dir, "jail")
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatal(err)
	}
	parent = fmt.Sprintf("vmm-it-%d-%d", os.Getpid(), time.Now().UnixNano()%100000)
	t.Cleanup(func() {
		for _, c := range []string{"cpu", "memory", "cpuset", "pids"} {
			p := filepath.Join("/sys/fs/cgroup", c, parent)
			if entries, _ := os.ReadDir(p); entries != nil {
				for _, e := range entries {
					if e.IsDir() {
						t.Errorf("cgroup %s/%s left behind", p, e.Name())
						_ = os.Remove(filepath.Join(p, e.Name()))
					}
				}
			}
			_ = os.Remove(p)
		}
	})
	section = fmt.Sprintf("[firecracker.jailer]\nbinary = %q\nuid = %d\ngid = %d\nchroot_base_dir = %q\ncgroup_version = \"1\"\nparent_cgroup = %q\n",
		jailer, jailUID, jailGID, base, parent)
	return section, base, parent
}

// jailOf returns the jail directory (<base>/<exec>/<id>) of a sandbox.
func jailOf(sb *sandboxv1.Sandbox) string { return filepath.Dir(sb.GetProcess().GetChroot()) }

func TestJailedLifecycle(t *testing.T) {
	dir := testutil.ShortDir(t)
	section, _, parent := jailerSection(t, dir)
	d := startDaemonAt(t, dir, options{extra: section})
	id := strings.TrimSpace(d.mustVMM("create", "--vcpus", "2", "--memory", "256", "--wait"))
	sb := d.waitState(id, sandboxv1.SandboxState_SANDBOX_STATE_READY, time.Second)
	p := sb.GetProcess()
	if !p.GetJailed() || p.GetUid() != jailUID || p.GetGid() != jailGID || p.GetChroot() == "" || p.GetCgroup() == "" {
		t.Fatalf("inspect process = %v", p)
	}
	if !strings.HasPrefix(p.GetApiSocket(), p.GetChroot()) || !strings.HasPrefix(sb.GetHardware().GetDisk(), p.GetChroot()) {
		t.Fatalf("API socket %q / disk %q are not inside the chroot %q", p.GetApiSocket(), sb.GetHardware().GetDisk(), p.GetChroot())
	}
	// The VMM runs chrooted, as the jail's user, in its cgroup.
	// (After pivot_root, /proc/PID/root reads "/" from outside its mount
	// namespace; compare the directories themselves.)
	var vmRoot, jailRoot syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/root/", p.GetPid()), &vmRoot); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(p.GetChroot(), &jailRoot); err != nil {
		t.Fatal(err)
	}
	if vmRoot.Ino != jailRoot.Ino || vmRoot.Dev != jailRoot.Dev {
		t.Fatalf("the VMM's root directory is not the chroot %q", p.GetChroot())
	}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.GetPid()))
	if !strings.Contains(string(status), fmt.Sprintf("Uid:\t%d\t%d", jailUID, jailUID)) {
		t.Fatalf("VMM does not run as uid %d:\n%s", jailUID, status)
	}
	quota, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/cpu", parent, id, "cpu.cfs_quota_us"))
	if err != nil || strings.TrimSpace(string(quota)) != "200000" {
		t.Fatalf("cpu.cfs_quota_us = %q (%v), want 200000 for 2 vCPUs", quota, err)
	}
	limit, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", parent, id, "memory.limit_in_bytes"))
	if err != nil || strings.TrimSpace(string(limit)) != fmt.Sprint((256+64)<<20) {
		t.Fatalf("memory.limit_in_bytes = %q (%v), want %d", limit, err, (256+64)<<20)
	}
	// Nothing in the chroot is readable by other users.
	_ = filepath.WalkDir(p.GetChroot(), func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		info, err := os.Lstat(path)
		if err != nil || info.Mode()&os.ModeSocket != 0 || info.Mode()&os.ModeDevice != 0 {
			return nil
		}
		if info.Mode().Perm()&0o007 != 0 {
			t.Errorf("%s has mode %v: readable by other users", path, info.Mode())
		}
		// The jailer writes its pid file as root, like the real one.
		if st := info.Sys().(*syscall.Stat_t); path != p.GetChroot() && !strings.HasSuffix(path, ".pid") && (st.Uid != jailUID || st.Gid != jailGID) {
			t.Errorf("%s is owned by %d:%d, want %d:%d", path, st.Uid, st.Gid, jailUID, jailGID)
		}
		return nil
	})
	// The shared kernel and image stay root's: the jail got its own copies.
	for _, f := range []string{sb.GetHardware().GetKernel(), sb.GetHardware().GetRootfs()} {
		var st syscall.Stat_t
		if err := syscall.Stat(f, &st); err != nil || st.Uid != 0 {
			t.Fatalf("%s: owner %d (%v): a host file was handed to the jail", f, st.Uid, err)
		}
	}
	d.mustVMM("stop", id)
	d.mustVMM("remove", id)
	if _, err := os.Stat(jailOf(sb)); !os.IsNotExist(err) {
		t.Fatalf("jail %s left after remove: %v", jailOf(sb), err)
	}
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup/cpu", parent, id)); !os.IsNotExist(err) {
		t.Fatalf("cgroup left after remove: %v", err)
	}
}

func TestJailedCrashedVMMIsCleanedUp(t *testing.T) {
	dir := testutil.ShortDir(t)
	section, _, parent := jailerSection(t, dir, "FCEMU_FAULTS=exit-after-boot 300=3")
	d := startDaemonAt(t, dir, options{extra: section})
	id := strings.TrimSpace(d.mustVMM("create", "--wait"))
	sb := d.waitState(id, sandboxv1.SandboxState_SANDBOX_STATE_FAILED, 10*time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, errJail := os.Stat(jailOf(sb))
		_, errCg := os.Stat(filepath.Join("/sys/fs/cgroup/cpu", parent, id))
		if os.IsNotExist(errJail) && os.IsNotExist(errCg) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the VMM crashed: jail %v, cgroup %v still there", errJail, errCg)
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.mustVMM("remove", id)
}

func TestJailedCheckpointRestoreAndNetwork(t *testing.T) {
	dir := testutil.ShortDir(t)
	section, _, _ := jailerSection(t, dir)
	hostNS, hostPath := hostNamespace(t)
	d := startDaemonAt(t, dir, options{extra: section, network: "bridge = \"vmmbr7\"\ncidr = \"10.207.0.0/24\"\n", netns: hostPath})
	orig := createReady(t, d)
	if !ping(t, hostNS, orig.GetNetwork().GetIpAddress()) {
		t.Fatalf("jailed sandbox unreachable\n%s", d.logText())
	}
	snapID := strings.TrimSpace(d.mustVMM("snapshot", "create", orig.GetId(), "--name", "jailed"))
	rid := strings.TrimSpace(d.mustVMM("snapshot", "restore", snapID))
	r := d.waitState(rid, sandboxv1.SandboxState_SANDBOX_STATE_READY, 15*time.Second)
	if !r.GetProcess().GetJailed() || r.GetProcess().GetChroot() == orig.GetProcess().GetChroot() {
		t.Fatalf("restored sandbox process = %v", r.GetProcess())
	}
	for _, s := range []*sandboxv1.Sandbox{orig, r} {
		if !ping(t, hostNS, s.GetNetwork().GetIpAddress()) {
			t.Fatalf("sandbox %s unreachable at %s", s.GetId(), s.GetNetwork().GetIpAddress())
		}
	}
	for _, s := range []*sandboxv1.Sandbox{orig, r} {
		d.mustVMM("remove", "--force", s.GetId())
		if _, err := os.Stat(jailOf(s)); !os.IsNotExist(err) {
			t.Fatalf("jail %s left after remove", jailOf(s))
		}
	}
}

func TestBadJailerConfigRejectedAtStart(t *testing.T) {
	testutil.RequiresRoot(t)
	dir := testutil.ShortDir(t)
	jailer := testutil.Binary(t, "jailer-emulator")
	tests := []struct {
		name, section, want string
	}{
		{"missing binary", fmt.Sprintf("[firecracker.jailer]\nbinary = \"/nonexistent/jailer\"\nuid = 1\ngid = 1\nchroot_base_dir = %q\n", dir), "/nonexistent/jailer"},
		{"chroot base missing", fmt.Sprintf("[firecracker.jailer]\nbinary = %q\nuid = 1\ngid = 1\nchroot_base_dir = \"/nonexistent/jail\"\n", jailer), "chroot_base_dir"},
		{"bad cgroup version", fmt.Sprintf("[firecracker.jailer]\nbinary = %q\nuid = 1\ngid = 1\nchroot_base_dir = %q\ncgroup_version = \"3\"\n", jailer, dir), "cgroup_version"},
		{"bad parent cgroup", fmt.Sprintf("[firecracker.jailer]\nbinary = %q\nuid = 1\ngid = 1\nchroot_base_dir = %q\nparent_cgroup = \"../escape\"\n", jailer, dir), "parent_cgroup"},
		{"bad resource limit", fmt.Sprintf("[firecracker.jailer]\nbinary = %q\nuid = 1\ngid = 1\nchroot_base_dir = %q\nresource_limits = [\"cpu=1\"]\n", jailer, dir), "resource_limits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf := filepath.Join(dir, "bad.toml")
			body := fmt.Sprintf("[network]\nenabled = false\n[grpc]\nunix_socket = %q\n%s", filepath.Join(dir, "bad.sock"), tt.section)
			if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(testutil.Binary(t, "vmm-daemon"), "--config", conf, "--data-dir", filepath.Join(dir, "data")).CombinedOutput()
			if err == nil || !strings.Contains(string(out), tt.want) {
				t.Fatalf("daemon start: %v\n%s\nwant an error naming %q", err, out, tt.want)
			}
		})
	}
}
