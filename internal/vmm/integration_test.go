package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/firecracker"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// emulator returns a launcher for the emulator binary with extra child
// environment, and registers the no-leftover-process check.
func emulator(t *testing.T, env ...string) (*DirectLauncher, string) {
	t.Helper()
	exe := testutil.Emulator(t)
	testutil.NoProcessesLeft(t, exe)
	return &DirectLauncher{Config: Config{
		Binary:        exe,
		SocketTimeout: 5 * time.Second,
		Env:           append([]string{"FCEMU_SKIP_TAP=1"}, env...),
	}}, exe
}

// touch creates a file with some content.
func touch(t *testing.T, path string, size int) {
	t.Helper()
	if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fullSpec returns a spec using every device, with its files created.
func fullSpec(t *testing.T, id string) VMSpec {
	t.Helper()
	dir := testutil.ShortDir(t)
	touch(t, filepath.Join(dir, "vmlinux"), 4096)
	touch(t, filepath.Join(dir, "rootfs.ext4"), 1<<20)
	touch(t, filepath.Join(dir, "data.img"), 1<<16)
	return VMSpec{
		ID: id, Dir: dir, VCPUs: 2, MemoryMiB: 128,
		Kernel: filepath.Join(dir, "vmlinux"),
		Drives: []DriveSpec{
			{ID: "rootfs", Path: filepath.Join(dir, "rootfs.ext4"), Root: true},
			{ID: "data", Path: "data.img", ReadOnly: true, CacheType: firecracker.CacheWriteback,
				RateLimiter: &firecracker.RateLimiter{Ops: &firecracker.TokenBucket{Size: 100, RefillTime: 1000}}},
		},
		NICs:    []NICSpec{{ID: "eth0", HostDevName: "tap0", GuestMAC: "06:00:ac:10:00:02", MTU: 1400}},
		Vsock:   &VsockSpec{CID: 3, UDSPath: filepath.Join(dir, "v.sock")},
		Logging: LoggingSpec{LogPath: filepath.Join(dir, "fc.log"), Level: "Debug", MetricsPath: filepath.Join(dir, "metrics.json")},
	}
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func assertGone(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if p == "" {
			continue
		}
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind (%v)", p, err)
		}
	}
}

func assertState(t *testing.T, vm *VM, want firecracker.InstanceState) {
	t.Helper()
	got, err := vm.State(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("state %q, want %q", got, want)
	}
}

func TestEmulatorLifecycle(t *testing.T) {
	l, _ := emulator(t)
	ctx := testCtx(t, 30*time.Second)
	spec := fullSpec(t, "life-1")
	vm, err := Start(ctx, l, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill(ctx)
	assertState(t, vm, firecracker.StateRunning)

	cfg, err := vm.Client.VMConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MachineConfig == nil || cfg.MachineConfig.VCPUCount != 2 || cfg.MachineConfig.MemSizeMiB != 128 {
		t.Errorf("machine-config %+v", cfg.MachineConfig)
	}
	if len(cfg.Drives) != 2 || cfg.Drives[0].DriveID != "rootfs" || !cfg.Drives[0].IsRootDevice || cfg.Drives[1].PathOnHost != "data.img" {
		t.Errorf("drives %+v", cfg.Drives)
	}
	if len(cfg.NetworkInterfaces) != 1 || cfg.NetworkInterfaces[0].HostDevName != "tap0" || cfg.NetworkInterfaces[0].MTU != 1400 {
		t.Errorf("network interfaces %+v", cfg.NetworkInterfaces)
	}
	if cfg.Vsock == nil || cfg.Vsock.UDSPath != spec.Vsock.UDSPath {
		t.Errorf("vsock %+v", cfg.Vsock)
	}
	if _, err := os.Stat(spec.Vsock.UDSPath); err != nil {
		t.Errorf("vsock socket: %v", err)
	}
	if err := vm.Client.FlushMetrics(ctx); err != nil {
		t.Error(err)
	}
	for _, p := range []string{spec.Logging.LogPath, spec.Logging.MetricsPath} {
		if st, err := os.Stat(p); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v (empty?)", p, err)
		}
	}

	if err := vm.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	assertState(t, vm, firecracker.StatePaused)
	if err := vm.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	assertState(t, vm, firecracker.StateRunning)

	// Snapshot: refused while running (Firecracker's rule), Diff refused by
	// us without dirty tracking, Full works while paused.
	snap := SnapshotSpec{StatePath: filepath.Join(spec.Dir, "vm.snap"), MemPath: filepath.Join(spec.Dir, "vm.mem")}
	if err := vm.CreateSnapshot(ctx, snap); !strings.Contains(firecracker.FaultMessage(err), "save/restore unavailable while running") {
		t.Errorf("snapshot while running: %v", err)
	}
	if err := vm.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	diff := snap
	diff.Diff = true
	if err := vm.CreateSnapshot(ctx, diff); !errors.Is(err, ErrDiffWithoutDirtyTracking) {
		t.Errorf("diff snapshot: %v, want ErrDiffWithoutDirtyTracking", err)
	}
	if err := vm.CreateSnapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}

	// Restore into a second process while the first still runs.
	// Same directory: the relative drive path "data.img" must resolve in the
	// new process's working directory too.
	dir2 := spec.Dir
	restored, err := Restore(ctx, l, RestoreSpec{
		ID: "life-2", Dir: dir2, APISocket: filepath.Join(dir2, "restored.sock"), ConsolePath: filepath.Join(dir2, "restored.console"),
		SnapshotPath: snap.StatePath, MemFilePath: snap.MemPath,
		ResumeVM: true, TrackDirtyPages: true,
		NetworkOverrides: []firecracker.NetworkOverride{{IfaceID: "eth0", HostDevName: "tap1"}},
		VsockPath:        filepath.Join(dir2, "v2.sock"),
		Logging:          LoggingSpec{LogPath: filepath.Join(dir2, "fc2.log")},
	})
	if err != nil {
		t.Fatal(err)
	}
	assertState(t, restored, firecracker.StateRunning)
	if _, err := os.Stat(restored.VsockPath); err != nil {
		t.Errorf("restored vsock socket: %v", err)
	}
	// The restored VM tracks dirty pages, so Diff snapshots are allowed.
	if err := restored.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := restored.CreateSnapshot(ctx, SnapshotSpec{
		StatePath: filepath.Join(dir2, "d.snap"), MemPath: filepath.Join(dir2, "d.mem"), Diff: true,
	}); err != nil {
		t.Errorf("diff snapshot of a dirty-tracking VM: %v", err)
	}

	// Graceful shutdown of a paused VM: resumed, Ctrl+Alt+Del, exit 0.
	st, err := restored.Shutdown(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if st != (ExitStatus{Code: 0, Known: true}) {
		t.Errorf("restored VM shutdown status %s, want exit 0", st)
	}
	assertGone(t, restored.SocketPath, restored.VsockPath)

	// Kill the original.
	st, err = vm.Kill(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st != (ExitStatus{Signal: syscall.SIGKILL, Known: true}) {
		t.Errorf("kill status %s, want SIGKILL", st)
	}
	assertGone(t, vm.SocketPath, vm.VsockPath)
	// Kill and Wait after the end are harmless.
	if st2, err := vm.Kill(ctx); err != nil || st2 != st {
		t.Errorf("second Kill = %s, %v", st2, err)
	}
}

func TestEmulatorShutdownFallsBackToKill(t *testing.T) {
	l, _ := emulator(t, "FCEMU_IGNORE_CTRL_ALT_DEL=1")
	ctx := testCtx(t, 20*time.Second)
	spec := fullSpec(t, "stubborn")
	vm, err := Start(ctx, l, spec)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	st, err := vm.Shutdown(testCtx(t, 300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if st.Signal != syscall.SIGKILL {
		t.Errorf("status %s, want SIGKILL after the grace period", st)
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 5*time.Second {
		t.Errorf("shutdown took %v", d)
	}
	assertGone(t, vm.SocketPath, vm.VsockPath)
}

func TestEmulatorGuestExit(t *testing.T) {
	l, _ := emulator(t, "FCEMU_FAULTS=exit-after-boot 100=0")
	ctx := testCtx(t, 20*time.Second)
	vm, err := Start(ctx, l, fullSpec(t, "guest-exit"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := vm.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Known || st.Signal != 0 || st.Code != 0 {
		t.Errorf("status %s, want exit 0", st)
	}
	assertGone(t, vm.SocketPath, vm.VsockPath)
}

func TestEmulatorStartErrors(t *testing.T) {
	tests := []struct {
		name   string
		faults string
		mutate func(*VMSpec)
		ctx    time.Duration
		want   []string
	}{
		{"missing kernel", "", func(s *VMSpec) { s.Kernel = filepath.Join(s.Dir, "no-kernel") }, 0,
			[]string{"boot-source", "Boot source error", "No such file"}},
		{"missing drive", "", func(s *VMSpec) { s.Drives[1].Path = "missing.img" }, 0,
			[]string{`drive "data"`, "No such file"}},
		{"fault machine-config", "fail PUT /machine-config=boom-mc", nil, 0, []string{"machine-config", "boom-mc"}},
		{"fault boot-source", "fail PUT /boot-source=boom-bs", nil, 0, []string{"boot-source", "boom-bs"}},
		{"fault root drive", "fail PUT /drives/rootfs=boom-root", nil, 0, []string{`drive "rootfs"`, "boom-root"}},
		{"fault second drive", "fail PUT /drives/data=boom-data", nil, 0, []string{`drive "data"`, "boom-data"}},
		{"fault nic", "fail PUT /network-interfaces/eth0=boom-net", nil, 0, []string{`network interface "eth0"`, "boom-net"}},
		{"fault vsock", "fail PUT /vsock=boom-vsock", nil, 0, []string{"vsock", "boom-vsock"}},
		{"fault start", "fail PUT /actions#InstanceStart=boom-start", nil, 0, []string{"InstanceStart", "boom-start"}},
		{"exit at start", "exit PUT /actions#InstanceStart=3", nil, 0, []string{"InstanceStart", "exit status 3"}},
		{"hang", "hang PUT /machine-config", nil, 500 * time.Millisecond, []string{"machine-config", "deadline exceeded"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var env []string
			if tt.faults != "" {
				env = append(env, "FCEMU_FAULTS="+tt.faults)
			}
			l, _ := emulator(t, env...)
			spec := fullSpec(t, "err-1")
			if tt.mutate != nil {
				tt.mutate(&spec)
			}
			d := tt.ctx
			if d == 0 {
				d = 20 * time.Second
			}
			vm, err := Start(testCtx(t, d), l, spec)
			if err == nil {
				vm.Kill(t.Context())
				t.Fatal("Start succeeded")
			}
			t.Logf("error: %v", err)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			assertGone(t, filepath.Join(spec.Dir, DefaultAPISocketName), spec.Vsock.UDSPath)
		})
	}
}

func TestEmulatorInvalidSpecStartsNothing(t *testing.T) {
	l, _ := emulator(t)
	spec := fullSpec(t, "bad_id")
	spec.VCPUs = 0
	_, err := Start(t.Context(), l, spec)
	if err == nil || !strings.Contains(err.Error(), "instance id") || !strings.Contains(err.Error(), "vcpus 0") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(spec.Dir, DefaultConsoleName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a process was started (console exists): %v", err)
	}
}

func TestEmulatorRestoreErrors(t *testing.T) {
	l, _ := emulator(t)
	dir := testutil.ShortDir(t)
	touch(t, filepath.Join(dir, "mem"), 4096)
	tests := []struct {
		name string
		spec RestoreSpec
		want []string
	}{
		{"missing snapshot", RestoreSpec{ID: "r-1", Dir: dir, SnapshotPath: filepath.Join(dir, "nope.snap"), MemFilePath: filepath.Join(dir, "mem")},
			[]string{"snapshot/load", "Load snapshot error"}},
		{"garbage snapshot", RestoreSpec{ID: "r-2", Dir: dir, SnapshotPath: filepath.Join(dir, "mem"), MemFilePath: filepath.Join(dir, "mem")},
			[]string{"snapshot/load", "Load snapshot error"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm, err := Restore(testCtx(t, 20*time.Second), l, tt.spec)
			if err == nil {
				vm.Kill(t.Context())
				t.Fatal("Restore succeeded")
			}
			t.Logf("error: %v", err)
			if !firecracker.IsAPIError(err) {
				t.Errorf("error %v does not carry the API error", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			assertGone(t, filepath.Join(dir, DefaultAPISocketName))
		})
	}
}

func TestEmulatorAttach(t *testing.T) {
	t.Run("second handle on our child", func(t *testing.T) {
		l, _ := emulator(t)
		ctx := testCtx(t, 20*time.Second)
		vm, err := Start(ctx, l, fullSpec(t, "att-1"))
		if err != nil {
			t.Fatal(err)
		}
		a, err := Attach(vm.Process.Pid())
		if err != nil {
			vm.Kill(ctx)
			t.Fatal(err)
		}
		defer a.Close()
		if _, err := vm.Kill(ctx); err != nil {
			t.Fatal(err)
		}
		st, err := a.Wait(ctx)
		if err != nil || st.Known {
			t.Errorf("attached Wait = %s, %v; want unknown status", st, err)
		}
	})
	t.Run("not our child", func(t *testing.T) {
		_, exe := emulator(t)
		dir := testutil.ShortDir(t)
		sock := filepath.Join(dir, "api.sock")
		script := fmt.Sprintf("%s --api-sock %s --id orphan </dev/null >/dev/null 2>&1 & echo $!", exe, sock)
		out, err := exec.Command("/bin/sh", "-c", script).Output()
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
		if err != nil {
			t.Fatal(err)
		}
		a, err := Attach(pid)
		if err != nil {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatal(err)
		}
		defer a.Close()
		defer os.Remove(sock)
		ctx := testCtx(t, 10*time.Second)
		c := firecracker.NewClient(sock)
		defer c.Close()
		if err := c.WaitReady(ctx); err != nil {
			a.Kill()
			t.Fatal(err)
		}
		if info, err := c.DescribeInstance(ctx); err != nil || info.ID != "orphan" {
			t.Errorf("DescribeInstance = %+v, %v", info, err)
		}
		c.Close()
		if err := a.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		st, err := a.Wait(ctx)
		if err != nil || st.Known {
			t.Errorf("Wait = %s, %v; want unknown status", st, err)
		}
		if !pidGone(pid) {
			t.Errorf("pid %d still exists", pid)
		}
	})
}

// TestEmulatorRelativePathsRestoreInAnotherDir boots a VM whose drive and
// vsock socket are relative to its directory, snapshots it and loads the
// snapshot in a second directory that holds its own copy of the drive: the
// two VMMs run at once, each with the disk and the vsock socket of its own
// directory, and each removes its sockets when it ends.
func TestEmulatorRelativePathsRestoreInAnotherDir(t *testing.T) {
	l, _ := emulator(t)
	ctx := testCtx(t, 30*time.Second)
	dir1, dir2 := testutil.ShortDir(t), testutil.ShortDir(t)
	touch(t, filepath.Join(dir1, "vmlinux"), 4096)
	touch(t, filepath.Join(dir1, "rootfs.ext4"), 1<<16)
	touch(t, filepath.Join(dir2, "rootfs.ext4"), 1<<16)
	vm, err := Start(ctx, l, VMSpec{
		ID: "rel-1", Dir: dir1, VCPUs: 1, MemoryMiB: 128, Kernel: filepath.Join(dir1, "vmlinux"),
		Drives: []DriveSpec{{ID: "rootfs", Path: "rootfs.ext4", Root: true}},
		Vsock:  &VsockSpec{CID: 3, UDSPath: "vsock.sock"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if vm.VsockPath != filepath.Join(dir1, "vsock.sock") {
		t.Errorf("vsock path %q, want it in %s", vm.VsockPath, dir1)
	}
	if err := vm.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	snap := SnapshotSpec{StatePath: filepath.Join(dir2, "vmstate"), MemPath: filepath.Join(dir2, "mem")}
	if err := vm.CreateSnapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if err := vm.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	restored, err := Restore(ctx, l, RestoreSpec{
		ID: "rel-2", Dir: dir2, SnapshotPath: snap.StatePath, MemFilePath: snap.MemPath,
		ResumeVM: true, VsockPath: "vsock.sock",
	})
	if err != nil {
		t.Fatal(err)
	}
	assertState(t, vm, firecracker.StateRunning)
	assertState(t, restored, firecracker.StateRunning)
	if restored.VsockPath != filepath.Join(dir2, "vsock.sock") {
		t.Errorf("restored vsock path %q, want it in %s", restored.VsockPath, dir2)
	}
	for _, p := range []string{vm.VsockPath, restored.VsockPath} {
		if fi, err := os.Lstat(p); err != nil || fi.Mode()&os.ModeSocket == 0 {
			t.Errorf("vsock socket %s: %v", p, err)
		}
	}
	// Each VMM holds the drive of its own directory.
	for _, c := range []struct {
		vm   *VM
		want string
	}{{vm, filepath.Join(dir1, "rootfs.ext4")}, {restored, filepath.Join(dir2, "rootfs.ext4")}} {
		fdDir := filepath.Join("/proc", strconv.Itoa(c.vm.Process.Pid()), "fd")
		entries, err := os.ReadDir(fdDir)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, en := range entries {
			if target, _ := os.Readlink(filepath.Join(fdDir, en.Name())); target == c.want {
				found = true
			}
		}
		if !found {
			t.Errorf("%s does not hold %s open", c.vm.ID, c.want)
		}
	}
	if _, err := restored.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Shutdown(testCtx(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	assertGone(t, vm.SocketPath, vm.VsockPath, restored.SocketPath, restored.VsockPath)
}
