package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/firecracker"
	"github.com/firecracker-vmm/firecracker-vmm/internal/snapshot"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// Identity of the jailed test VMMs: not a user of this machine.
const (
	testJailUID = 64133
	testJailGID = 64134
)

// jailEnv is a manager (with a snapshot catalog) that starts the Firecracker
// emulator through the jailer emulator, cgroup v1, under a per-process
// parent cgroup that is removed at the end.
func jailEnv(t *testing.T, env ...string) (*snapEnv, *vmm.JailerLauncher) {
	t.Helper()
	testutil.RequiresRoot(t)
	fc := testutil.Emulator(t)
	jailer := testutil.Binary(t, "jailer-emulator")
	testutil.NoProcessesLeft(t, fc)
	testutil.NoProcessesLeft(t, jailer)
	l := &vmm.JailerLauncher{
		Config: vmm.Config{Binary: fc, SocketTimeout: 10 * time.Second, Env: append([]string{"FCEMU_SKIP_TAP=1"}, env...)},
		Jailer: vmm.JailerConfig{
			Binary: jailer, UID: testJailUID, GID: testJailGID, ChrootBaseDir: testutil.ShortDir(t),
			CgroupVersion: "1", ParentCgroup: fmt.Sprintf("vmm-sbtest-%d", os.Getpid()),
		},
	}
	if j, err := l.Jail("x", vmm.Limits{VCPUs: 1, MemoryMiB: 1}); err == nil {
		t.Cleanup(func() {
			for _, c := range j.Cgroups {
				_ = syscall.Rmdir(filepath.Dir(c))
			}
		})
	}
	var cat *snapshot.Catalog
	e := newTestEnv(t, testutil.ShortDir(t), nil, func(c *Config) {
		c.Launcher = l
		c.DefaultMemoryMiB = 128
		withCatalog(t, c.DataDir, &cat, nil)(c)
	})
	return &snapEnv{testEnv: e, cat: cat}, l
}

// checkJailed checks a ready jailed sandbox's record and files.
func checkJailed(t *testing.T, l *vmm.JailerLauncher, s Sandbox) vmm.Jail {
	t.Helper()
	j, err := l.Jail(s.ID, vmm.Limits{VCPUs: s.Hardware.VCPUs, MemoryMiB: s.Hardware.MemoryMiB})
	if err != nil {
		t.Fatal(err)
	}
	p := s.Process
	if !p.Jailed || p.Chroot != j.Root || p.UID != testJailUID || p.GID != testJailGID || p.Cgroup != j.Cgroup || p.Cgroup == "" {
		t.Errorf("process record %+v, jail %+v", p, j)
	}
	for name, path := range map[string]string{
		"api socket": p.APISocket, "log": p.LogPath, "metrics": p.MetricsPath, "vsock": p.VsockPath, "disk": s.Hardware.Disk,
	} {
		if !strings.HasPrefix(path, j.Root+"/") || !exists(path) {
			t.Errorf("%s %s: not in the chroot %s", name, path, j.Root)
		}
	}
	if p.ConsolePath != filepath.Join(s.Dir, ConsoleName) || !exists(p.ConsolePath) {
		t.Errorf("console %s", p.ConsolePath)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(s.Hardware.Disk, &st); err != nil || st.Uid != testJailUID || st.Gid != testJailGID || st.Mode&0o077 != 0 {
		t.Errorf("disk owner %d:%d mode %o (%v)", st.Uid, st.Gid, st.Mode&0o777, err)
	}
	cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.PID))
	if !strings.Contains(string(cg), "/"+l.Jailer.ParentCgroup+"/"+s.ID) {
		t.Errorf("VMM not in its cgroup:\n%s", cg)
	}
	return j
}

func jailGone(t *testing.T, j vmm.Jail) {
	t.Helper()
	for _, p := range append([]string{j.Dir}, j.Cgroups...) {
		if exists(p) {
			t.Errorf("%s left behind", p)
		}
	}
}

func TestJailedLifecycle(t *testing.T) {
	e, l := jailEnv(t)
	ctx := ctxT(t, 30*time.Second)
	s, err := e.m.Create(ctx, CreateRequest{VCPUs: 2})
	if err != nil {
		t.Fatal(err)
	}
	r := e.waitState(t, s.ID, StateReady, 15*time.Second)
	j := checkJailed(t, l, r)
	if got, _ := os.ReadFile(filepath.Join(j.Cgroups[0], "cpu.cfs_quota_us")); strings.TrimSpace(string(got)) != "200000" {
		t.Errorf("cpu quota %q", got)
	}
	if st := vmState(t, r); st != firecracker.StateRunning {
		t.Errorf("VMM state %s", st)
	}
	if _, err := e.m.Stop(ctx, s.ID, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	jailGone(t, j)
	if err := e.m.Remove(ctx, s.ID, false); err != nil {
		t.Fatal(err)
	}
	if dirs := e.sandboxDirs(t); len(dirs) != 0 {
		t.Errorf("dirs left: %v", dirs)
	}

	// Remove --force of a running sandbox.
	s2, err := e.m.Create(ctx, CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	j2 := checkJailed(t, l, e.waitState(t, s2.ID, StateReady, 15*time.Second))
	if err := e.m.Remove(ctx, s2.ID, true); err != nil {
		t.Fatal(err)
	}
	jailGone(t, j2)
}

func TestJailedCrashAndBootFailure(t *testing.T) {
	t.Run("crash", func(t *testing.T) {
		e, l := jailEnv(t, "FCEMU_FAULTS=exit-after-boot 300=7")
		ctx := ctxT(t, 30*time.Second)
		s, err := e.m.Create(ctx, CreateRequest{})
		if err != nil {
			t.Fatal(err)
		}
		r := e.waitState(t, s.ID, StateReady, 15*time.Second)
		j := checkJailed(t, l, r)
		e.waitState(t, s.ID, StateFailed, 15*time.Second)
		jailGone(t, j)
		if err := e.m.Remove(ctx, s.ID, false); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("boot failure", func(t *testing.T) {
		e, l := jailEnv(t, "FCEMU_FAULTS=fail PUT /actions#InstanceStart=boom")
		ctx := ctxT(t, 30*time.Second)
		s, err := e.m.Create(ctx, CreateRequest{})
		if err != nil {
			t.Fatal(err)
		}
		f := e.waitState(t, s.ID, StateFailed, 15*time.Second)
		if !strings.Contains(f.FailureReason, "boom") {
			t.Errorf("reason %q", f.FailureReason)
		}
		j, _ := l.Jail(s.ID, vmm.Limits{VCPUs: f.Hardware.VCPUs, MemoryMiB: f.Hardware.MemoryMiB})
		jailGone(t, j)
	})
}

func TestJailedCheckpointRestore(t *testing.T) {
	e, l := jailEnv(t)
	ctx := ctxT(t, 60*time.Second)
	s, err := e.m.Create(ctx, CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	orig := e.waitState(t, s.ID, StateReady, 15*time.Second)
	oj := checkJailed(t, l, orig)
	base, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: orig.ID, Name: "base"})
	if err != nil {
		t.Fatal(err)
	}
	if base.Files[snapshot.MemName].Size != 128<<20 {
		t.Errorf("meta %+v", base)
	}
	for _, n := range []string{SnapshotStateName, SnapshotMemName} {
		if exists(filepath.Join(oj.Root, n)) {
			t.Errorf("%s left in the jail after the checkpoint", n)
		}
	}
	if st := vmState(t, orig); st != firecracker.StateRunning {
		t.Errorf("original is %s after the checkpoint", st)
	}

	r, err := e.m.Restore(ctx, RestoreRequest{SnapshotID: base.ID})
	if err != nil {
		t.Fatal(err)
	}
	clone := e.waitState(t, r.ID, StateReady, 15*time.Second)
	cj := checkJailed(t, l, clone)
	if cj.Root == oj.Root {
		t.Fatal("the clone shares the original's jail")
	}
	files := openFiles(t, clone.Process.PID)
	t.Logf("clone's open files: %v", files)
	if st := vmState(t, clone); st != firecracker.StateRunning {
		t.Errorf("clone is %s", st)
	}
	// A checkpoint of the clone must not write through its links to the
	// base snapshot's files.
	before, _ := os.ReadFile(filepath.Join(base.Dir, snapshot.VMStateName))
	again, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: clone.ID, Name: "again"})
	if err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(filepath.Join(base.Dir, snapshot.VMStateName))
	if string(before) != string(after) {
		t.Error("the clone's checkpoint changed the base snapshot")
	}
	for _, id := range []string{orig.ID, clone.ID} {
		if err := e.m.Remove(ctx, id, true); err != nil {
			t.Fatal(err)
		}
	}
	jailGone(t, oj)
	jailGone(t, cj)
	if err := e.m.DeleteSnapshot(ctx, again.ID); err != nil {
		t.Fatal(err)
	}
}
