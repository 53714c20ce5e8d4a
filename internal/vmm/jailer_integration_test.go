package vmm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/firecracker"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// Identity of the jailed test VMMs: not a user of this machine.
const (
	testJailUID = 64123
	testJailGID = 64124
)

// jailerLauncher returns a JailerLauncher for the jailer and Firecracker
// emulators under a fresh chroot base and a per-process parent cgroup
// (removed at the end), with cgroup version v.
func jailerLauncher(t *testing.T, v string, env ...string) *JailerLauncher {
	t.Helper()
	testutil.RequiresRoot(t)
	fc := testutil.Emulator(t)
	jailer := testutil.Binary(t, "jailer-emulator")
	testutil.NoProcessesLeft(t, fc)
	testutil.NoProcessesLeft(t, jailer)
	parent := fmt.Sprintf("vmm-test-%d", os.Getpid())
	l := &JailerLauncher{
		Config: Config{
			Binary: fc, SocketTimeout: 5 * time.Second,
			Env: append([]string{"FCEMU_SKIP_TAP=1"}, env...),
		},
		Jailer: JailerConfig{
			Binary: jailer, UID: testJailUID, GID: testJailGID, ChrootBaseDir: testutil.ShortDir(t),
			CgroupVersion: v, ParentCgroup: parent,
		},
	}
	t.Cleanup(func() {
		for _, c := range []string{"", "cpu", "memory"} {
			mnt, err := cgroupMount("/proc/self/mountinfo", c)
			if err == nil {
				_ = syscall.Rmdir(filepath.Join(mnt, parent))
			}
		}
	})
	return l
}

// jailSpec is a spec with a kernel, a drive outside the jail (placed by
// the launcher) and a relative vsock socket (inside the jail).
func jailSpec(t *testing.T, id string) VMSpec {
	t.Helper()
	dir := testutil.ShortDir(t)
	touch(t, filepath.Join(dir, "vmlinux"), 4096)
	touch(t, filepath.Join(dir, "rootfs.ext4"), 1<<20)
	return VMSpec{
		ID: id, Dir: dir, VCPUs: 2, MemoryMiB: 128,
		Kernel:  filepath.Join(dir, "vmlinux"),
		Drives:  []DriveSpec{{ID: "rootfs", Path: filepath.Join(dir, "rootfs.ext4"), Root: true}},
		Vsock:   &VsockSpec{CID: 3, UDSPath: "v.sock"},
		Logging: LoggingSpec{LogPath: filepath.Join(dir, "fc.log"), MetricsPath: filepath.Join(dir, "m.json")},
	}
}

// checkJailFiles checks that everything in root belongs to uid:gid and
// that nothing is accessible to other users.
func checkJailFiles(t *testing.T, root string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		n++
		// The jailer writes the pid file as root, like the real one.
		if (st.Uid != testJailUID || st.Gid != testJailGID) && !(strings.HasSuffix(p, ".pid") && st.Uid == 0) {
			t.Errorf("%s: owned by %d:%d, want %d:%d", p, st.Uid, st.Gid, testJailUID, testJailGID)
		}
		if st.Mode&0o007 != 0 {
			t.Errorf("%s: mode %o gives other users access", p, st.Mode&0o7777)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 8 {
		t.Errorf("only %d entries in the jail", n)
	}
}

// procIDs returns the real uid and gid of pid.
func procIDs(t *testing.T, pid int) (uid, gid string) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
			uid = f[1]
		} else if len(f) > 1 && f[0] == "Gid:" {
			gid = f[1]
		}
	}
	return uid, gid
}

func readTrim(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestJailedStartShutdown(t *testing.T) {
	for _, pidns := range []bool{false, true} {
		t.Run(fmt.Sprintf("new-pid-ns=%v", pidns), func(t *testing.T) {
			l := jailerLauncher(t, "1")
			l.Jailer.NewPIDNS = pidns
			ctx := testCtx(t, 30*time.Second)
			spec := jailSpec(t, "jailed-1")
			vm, err := Start(ctx, l, spec)
			if err != nil {
				t.Fatal(err)
			}
			defer vm.Kill(context.Background())
			assertState(t, vm, firecracker.StateRunning)
			j := vm.Jail
			if j == nil {
				t.Fatal("no jail recorded")
			}
			wantRoot := filepath.Join(l.Jailer.ChrootBaseDir, filepath.Base(l.Config.Binary), "jailed-1", "root")
			if j.Root != wantRoot {
				t.Errorf("root %s, want %s", j.Root, wantRoot)
			}
			if vm.SocketPath != filepath.Join(wantRoot, "run/firecracker.socket") ||
				vm.VsockPath != filepath.Join(wantRoot, "v.sock") ||
				vm.LogPath != filepath.Join(wantRoot, "firecracker.log") ||
				vm.MetricsPath != filepath.Join(wantRoot, "firecracker.metrics") {
				t.Errorf("paths: api %s vsock %s log %s metrics %s", vm.SocketPath, vm.VsockPath, vm.LogPath, vm.MetricsPath)
			}
			for _, f := range []string{"vmlinux", "drive_rootfs", "firecracker.log", "firecracker.metrics", "v.sock"} {
				if _, err := os.Lstat(filepath.Join(wantRoot, f)); err != nil {
					t.Errorf("jail lacks %s: %v", f, err)
				}
			}
			// The drive is the jail's own copy: the host's file keeps its
			// owner, so the jail's user cannot change files outside the jail.
			var a, b syscall.Stat_t
			if err := syscall.Stat(spec.Drives[0].Path, &a); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Stat(filepath.Join(wantRoot, "drive_rootfs"), &b); err != nil {
				t.Fatal(err)
			}
			if a.Ino == b.Ino || a.Uid == testJailUID {
				t.Errorf("the host's drive was handed to the jail (inode %d/%d, owner %d)", a.Ino, b.Ino, a.Uid)
			}
			checkJailFiles(t, wantRoot)

			pid := vm.Process.Pid()
			if uid, gid := procIDs(t, pid); uid != strconv.Itoa(testJailUID) || gid != strconv.Itoa(testJailGID) {
				t.Errorf("firecracker runs as %s:%s", uid, gid)
			}
			if len(j.Cgroups) != 2 {
				t.Fatalf("cgroups %q, want cpu and memory", j.Cgroups)
			}
			cg := readTrim(t, fmt.Sprintf("/proc/%d/cgroup", pid))
			if !strings.Contains(cg, "/"+l.Jailer.ParentCgroup+"/jailed-1") {
				t.Errorf("/proc/%d/cgroup:\n%s", pid, cg)
			}
			if got := readTrim(t, filepath.Join(j.Cgroups[0], "cpu.cfs_quota_us")); got != "200000" {
				t.Errorf("cpu.cfs_quota_us = %s", got)
			}
			if got := readTrim(t, filepath.Join(j.Cgroups[1], "memory.limit_in_bytes")); got != strconv.Itoa((128+64)<<20) {
				t.Errorf("memory.limit_in_bytes = %s", got)
			}
			if pidns && vm.Process.owned {
				t.Error("with a new PID namespace the VMM must be attached, not our child")
			}

			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if _, err := vm.Shutdown(sctx); err != nil {
				t.Fatal(err)
			}
			assertGone(t, j.Dir)
			assertGone(t, j.Cgroups...)
		})
	}
}

func TestJailedCrashCleansUp(t *testing.T) {
	l := jailerLauncher(t, "1", "FCEMU_FAULTS=exit-after-boot 100=3")
	ctx := testCtx(t, 30*time.Second)
	vm, err := Start(ctx, l, jailSpec(t, "jailed-crash"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := vm.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Known || st.Code != 3 {
		t.Errorf("status %s, want exit 3", st)
	}
	assertGone(t, vm.Jail.Dir)
	assertGone(t, vm.Jail.Cgroups...)
}

func TestJailedStartFailureCleansUp(t *testing.T) {
	l := jailerLauncher(t, "1", "FCEMU_FAULTS=fail PUT /actions#InstanceStart=boom-start")
	ctx := testCtx(t, 30*time.Second)
	_, err := Start(ctx, l, jailSpec(t, "jailed-fail"))
	if err == nil || !strings.Contains(err.Error(), "boom-start") {
		t.Fatalf("err = %v", err)
	}
	j, jerr := l.Jail("jailed-fail", Limits{VCPUs: 2, MemoryMiB: 128})
	if jerr != nil {
		t.Fatal(jerr)
	}
	assertGone(t, j.Dir)
	assertGone(t, j.Cgroups...)
}

func TestJailedLaunchErrors(t *testing.T) {
	t.Run("path outside the jail", func(t *testing.T) {
		l := jailerLauncher(t, "1")
		spec := jailSpec(t, "jailed-out")
		spec.Vsock.UDSPath = filepath.Join(spec.Dir, "v.sock") // not in the jail
		_, err := Start(testCtx(t, 30*time.Second), l, spec)
		if err == nil || !strings.Contains(err.Error(), "outside the jail") {
			t.Fatalf("err = %v", err)
		}
		j, _ := l.Jail("jailed-out", Limits{VCPUs: 2, MemoryMiB: 128})
		assertGone(t, j.Dir)
		assertGone(t, j.Cgroups...)
	})
	t.Run("jailer fails", func(t *testing.T) {
		l := jailerLauncher(t, "1")
		l.Jailer.ResourceLimits = []string{"no-file=0"} // Firecracker cannot open anything
		spec := jailSpec(t, "jailed-bad")
		_, err := Start(testCtx(t, 30*time.Second), l, spec)
		if err == nil {
			t.Fatal("Start succeeded")
		}
		t.Logf("error: %v", err)
		j, _ := l.Jail("jailed-bad", Limits{VCPUs: 2, MemoryMiB: 128})
		assertGone(t, j.Dir)
		assertGone(t, j.Cgroups...)
	})
	t.Run("cgroup v2 without controllers", func(t *testing.T) {
		l := jailerLauncher(t, "2")
		mnt, err := cgroupMount("/proc/self/mountinfo", "")
		if err != nil {
			t.Skipf("skipping: %v", err)
		}
		if b, _ := os.ReadFile(filepath.Join(mnt, "cgroup.controllers")); strings.Contains(string(b), "cpu") {
			t.Skip("skipping: this host's cgroup2 has controllers")
		}
		spec := jailSpec(t, "jailed-v2")
		_, err = Start(testCtx(t, 30*time.Second), l, spec)
		if err == nil {
			t.Fatal("Start succeeded with cgroup v2 limits but no v2 controllers")
		}
		t.Logf("error: %v", err)
		j, _ := l.Jail("jailed-v2", Limits{VCPUs: 2, MemoryMiB: 128})
		assertGone(t, j.Dir)
		assertGone(t, j.Cgroups...)
	})
}

func TestJailedV2WithoutLimits(t *testing.T) {
	l := jailerLauncher(t, "2")
	if _, err := cgroupMount("/proc/self/mountinfo", ""); err != nil {
		t.Skipf("skipping: %v", err)
	}
	dir := testutil.ShortDir(t)
	touch(t, filepath.Join(dir, "vmlinux"), 4096)
	ctx := testCtx(t, 30*time.Second)
	// Launch directly: no limits, so the jailer only joins an existing
	// parent (there is none) and continues.
	launched, err := l.Launch(ctx, LaunchRequest{ID: "jailed-v2ok", Dir: dir, ConsolePath: filepath.Join(dir, "console.log")})
	if err != nil {
		t.Fatal(err)
	}
	vm := &VM{ID: "jailed-v2ok", Process: launched.Process, Client: firecracker.NewClient(launched.SocketPath),
		SocketPath: launched.SocketPath, paths: launched.Paths, release: launched.Cleanup, Jail: launched.Jail}
	if _, err := vm.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	assertGone(t, launched.Jail.Dir)
}

func TestJailedRestore(t *testing.T) {
	l := jailerLauncher(t, "1")
	ctx := testCtx(t, 30*time.Second)
	spec := jailSpec(t, "jailed-snap")
	vm, err := Start(ctx, l, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill(context.Background())
	if err := vm.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	// Written inside the jail, then moved out.
	state, mem := filepath.Join(vm.Jail.Root, "s.vmstate"), filepath.Join(vm.Jail.Root, "s.mem")
	if err := vm.CreateSnapshot(ctx, SnapshotSpec{StatePath: state, MemPath: mem}); err != nil {
		t.Fatal(err)
	}
	if err := vm.CreateSnapshot(ctx, SnapshotSpec{StatePath: filepath.Join(spec.Dir, "x"), MemPath: mem}); err == nil ||
		!strings.Contains(err.Error(), "outside the jail") {
		t.Errorf("snapshot outside the jail: err = %v", err)
	}
	out := testutil.ShortDir(t)
	for _, f := range []string{state, mem} {
		if err := os.Rename(f, filepath.Join(out, filepath.Base(f))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := vm.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	assertGone(t, vm.Jail.Dir)

	// The restore places the snapshot files (outside the jail) in it; the
	// drive, saved as /drive_rootfs, must be there too.
	rdir := testutil.ShortDir(t)
	if _, err := l.Prepare("jailed-rest"); err != nil {
		t.Fatal(err)
	}
	j, _ := l.Jail("jailed-rest", Limits{VCPUs: 2, MemoryMiB: 128})
	if err := PlaceFile(ctx, j, spec.Drives[0].Path, j.HostPath("drive_rootfs")); err != nil {
		t.Fatal(err)
	}
	rvm, err := Restore(ctx, l, RestoreSpec{
		ID: "jailed-rest", Dir: rdir, SnapshotPath: filepath.Join(out, "s.vmstate"), MemFilePath: filepath.Join(out, "s.mem"),
		ResumeVM: true, VsockPath: "v.sock", Limits: &Limits{VCPUs: 2, MemoryMiB: 128},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer rvm.Kill(context.Background())
	assertState(t, rvm, firecracker.StateRunning)
	if rvm.VsockPath != j.HostPath("v.sock") {
		t.Errorf("vsock %s", rvm.VsockPath)
	}
	checkJailFiles(t, j.Root)
	if _, err := rvm.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	assertGone(t, j.Dir)
	assertGone(t, j.Cgroups...)
	if _, err := os.Stat(filepath.Join(out, "s.mem")); errors.Is(err, os.ErrNotExist) {
		t.Error("the restore's cleanup removed the source snapshot")
	}
}
