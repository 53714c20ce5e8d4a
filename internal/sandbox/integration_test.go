package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// emuEnv is a manager that boots the Firecracker emulator, with extra
// emulator environment. After the test no emulator process may be left.
func emuEnv(t *testing.T, mutate func(*Config), env ...string) (*testEnv, string) {
	t.Helper()
	exe := testutil.Emulator(t)
	testutil.NoProcessesLeft(t, exe)
	l := &vmm.DirectLauncher{Config: vmm.Config{
		Binary:        exe,
		SocketTimeout: 10 * time.Second,
		Env:           append([]string{"FCEMU_SKIP_TAP=1"}, env...),
	}}
	e := newTestEnv(t, testutil.ShortDir(t), nil, func(c *Config) {
		c.Launcher = l
		c.DefaultMemoryMiB = 128
		if mutate != nil {
			mutate(c)
		}
	})
	return e, exe
}

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func TestEmulatorLifecycle(t *testing.T) {
	e, _ := emuEnv(t, nil)
	ctx := ctxT(t, 30*time.Second)
	s, err := e.m.Create(ctx, CreateRequest{Labels: map[string]string{"app": "web"}})
	if err != nil {
		t.Fatal(err)
	}
	r := e.waitState(t, s.ID, StateReady, 15*time.Second)
	if !alive(r.Process.PID) {
		t.Fatalf("VMM pid %d not alive", r.Process.PID)
	}
	for _, p := range []string{r.Process.APISocket, r.Process.ConsolePath, r.Process.LogPath, r.Process.MetricsPath, r.Hardware.Disk} {
		if !exists(p) {
			t.Errorf("%s missing", p)
		}
	}
	console, _ := os.ReadFile(r.Process.ConsolePath)
	if !strings.Contains(string(console), "emulated guest ready") || !strings.Contains(string(console), DefaultBootArgs) {
		t.Errorf("console:\n%s", console)
	}
	stopped, err := e.m.Stop(ctx, s.ID, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if stopped.State != StateStopped || alive(r.Process.PID) || exists(r.Process.APISocket) {
		t.Errorf("after stop: state %s, pid alive %v, socket %v", stopped.State, alive(r.Process.PID), exists(r.Process.APISocket))
	}
	ev := e.rec.wait(t, s.ID, ActionStopped, time.Second)
	if ev.Attributes["exit_code"] != "0" || ev.Attributes["forced"] != "false" {
		t.Errorf("stopped attributes %v (want a clean exit 0 through reboot=k)", ev.Attributes)
	}
	if err := e.m.Remove(ctx, s.ID, false); err != nil {
		t.Fatal(err)
	}
	if dirs := e.sandboxDirs(t); len(dirs) != 0 {
		t.Errorf("dirs left: %v", dirs)
	}
	want := []string{"created/starting", "ready/ready", "stopping/stopping", "stopped/stopped", "removed/stopped"}
	e.rec.expect(t, s.ID, want...)
}

func TestEmulatorStopTimeoutKills(t *testing.T) {
	tests := []struct {
		name     string
		env      []string
		bootArgs string
	}{
		{"guest ignores ctrl-alt-del", []string{"FCEMU_IGNORE_CTRL_ALT_DEL=1"}, ""},
		{"guest halts without reboot=k", nil, "console=ttyS0 panic=1 pci=off"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, _ := emuEnv(t, nil, tt.env...)
			ctx := ctxT(t, 30*time.Second)
			s, err := e.m.Create(ctx, CreateRequest{BootArgs: tt.bootArgs})
			if err != nil {
				t.Fatal(err)
			}
			r := e.waitState(t, s.ID, StateReady, 15*time.Second)
			start := time.Now()
			if _, err := e.m.Stop(ctx, s.ID, 300*time.Millisecond); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d < 300*time.Millisecond || d > 5*time.Second {
				t.Errorf("stop took %v", d)
			}
			ev := e.rec.wait(t, s.ID, ActionStopped, time.Second)
			if ev.Attributes["forced"] != "true" || ev.Attributes["signal"] != syscall.SIGKILL.String() {
				t.Errorf("stopped attributes %v", ev.Attributes)
			}
			if alive(r.Process.PID) || exists(r.Process.APISocket) {
				t.Error("VMM or socket left after forced stop")
			}
			if err := e.m.Remove(ctx, s.ID, false); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestEmulatorBootFailure(t *testing.T) {
	e, exe := emuEnv(t, nil, "FCEMU_FAULTS=fail PUT /boot-source=boom")
	ctx := ctxT(t, 30*time.Second)
	s, err := e.m.Create(ctx, CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ev := e.rec.wait(t, s.ID, ActionFailed, 15*time.Second)
	got, _ := e.m.Get(ctx, s.ID)
	if got.State != StateFailed || !strings.Contains(got.FailureReason, "boom") || !strings.Contains(ev.Attributes["reason"], "boom") {
		t.Errorf("state %s reason %q event %v", got.State, got.FailureReason, ev.Attributes)
	}
	if pids := testutil.ProcessesOf(exe); len(pids) != 0 {
		t.Errorf("processes left after failed boot: %v", pids)
	}
	if exists(got.Process.APISocket) {
		t.Error("API socket left after failed boot")
	}
	if !exists(got.Process.ConsolePath) {
		t.Error("console.log should stay until remove")
	}
	if err := e.m.Remove(ctx, s.ID, false); err != nil {
		t.Fatal(err)
	}
	if dirs := e.sandboxDirs(t); len(dirs) != 0 {
		t.Errorf("dirs left: %v", dirs)
	}
}

func TestEmulatorCrash(t *testing.T) {
	e, _ := emuEnv(t, nil, "FCEMU_FAULTS=exit-after-boot 200")
	ctx := ctxT(t, 30*time.Second)
	s, err := e.m.Create(ctx, CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ev := e.rec.wait(t, s.ID, ActionExited, 15*time.Second)
	if ev.State != string(StateFailed) || ev.Attributes["exit_code"] != "1" {
		t.Errorf("exited event %+v", ev)
	}
	got, _ := e.m.Get(ctx, s.ID)
	if got.State != StateFailed || !strings.Contains(got.FailureReason, "exit status 1") || got.Process.PID != 0 {
		t.Errorf("record state %s reason %q pid %d", got.State, got.FailureReason, got.Process.PID)
	}
	if exists(got.Process.APISocket) {
		t.Error("API socket left after crash")
	}
	want := []string{"created/starting", "ready/ready", "exited/failed"}
	e.rec.expect(t, s.ID, want...)
	if err := e.m.Remove(ctx, s.ID, false); err != nil {
		t.Fatal(err)
	}
}

func TestEmulatorRemoveWhileStarting(t *testing.T) {
	e, exe := emuEnv(t, nil, "FCEMU_BOOT_DELAY_MS=5000")
	ctx := ctxT(t, 30*time.Second)
	s, err := e.m.Create(ctx, CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// Wait until the emulator runs, then give the boot time to reach the
	// (5 s) InstanceStart.
	deadline := time.Now().Add(10 * time.Second)
	for !exists(s.Process.APISocket) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	if got, _ := e.m.Get(ctx, s.ID); got.State != StateStarting {
		t.Fatalf("state %s, want starting", got.State)
	}
	if len(testutil.ProcessesOf(exe)) != 1 {
		t.Fatalf("emulator not running: %v", testutil.ProcessesOf(exe))
	}
	start := time.Now()
	if err := e.m.Remove(ctx, s.ID, true); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("remove while starting took %v", d)
	}
	if pids := testutil.ProcessesOf(exe); len(pids) != 0 {
		t.Errorf("processes left: %v", pids)
	}
	if dirs := e.sandboxDirs(t); len(dirs) != 0 {
		t.Errorf("dirs left: %v", dirs)
	}
	want := []string{"created/starting", "stopping/stopping", "stopped/stopped", "removed/stopped"}
	e.rec.expect(t, s.ID, want...)
}

func TestEmulatorTTL(t *testing.T) {
	e, exe := emuEnv(t, nil)
	ctx := ctxT(t, 30*time.Second)
	s, err := e.m.Create(ctx, CreateRequest{TTL: 1500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	e.waitState(t, s.ID, StateReady, 15*time.Second)
	e.rec.wait(t, s.ID, ActionExpired, 10*time.Second)
	ev := e.rec.wait(t, s.ID, ActionRemoved, 10*time.Second)
	if ev.Attributes["reason"] != "ttl" {
		t.Errorf("removed %+v", ev)
	}
	if pids := testutil.ProcessesOf(exe); len(pids) != 0 {
		t.Errorf("processes left: %v", pids)
	}
	if dirs := e.sandboxDirs(t); len(dirs) != 0 {
		t.Errorf("dirs left: %v", dirs)
	}
}

func TestEmulatorConcurrentCreatesAndShutdown(t *testing.T) {
	const n = 50
	e, exe := emuEnv(t, nil)
	ctx := ctxT(t, 60*time.Second)
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			s, err := e.m.Create(ctx, CreateRequest{Labels: map[string]string{"i": fmt.Sprint(i)}})
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = s.ID
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	disks := map[string]bool{}
	pids := map[int]bool{}
	for _, id := range ids {
		s := e.waitState(t, id, StateReady, 40*time.Second)
		disks[s.Hardware.Disk] = true
		pids[s.Process.PID] = true
	}
	if slices.Sort(ids); len(slices.Compact(slices.Clone(ids))) != n {
		t.Errorf("ids not distinct: %v", ids)
	}
	if len(disks) != n || len(pids) != n {
		t.Errorf("%d distinct disks, %d distinct pids for %d sandboxes", len(disks), len(pids), n)
	}
	l, _ := e.m.List(ctx, ListFilter{States: []State{StateReady}})
	if len(l) != n || !slices.IsSortedFunc(l, func(a, b Sandbox) int { return strings.Compare(a.ID, b.ID) }) {
		t.Errorf("list: %d ready sandboxes", len(l))
	}
	if got := len(testutil.ProcessesOf(exe)); got != n {
		t.Errorf("%d emulator processes, want %d", got, n)
	}

	start := time.Now()
	if err := e.m.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("shutdown of %d sandboxes took %v", n, time.Since(start))
	if pids := testutil.ProcessesOf(exe); len(pids) != 0 {
		t.Errorf("processes left after shutdown: %v", pids)
	}
	for _, id := range ids {
		if _, err := e.m.Get(ctx, id); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("%s after shutdown: %v, want released (not found)", id, err)
		}
		if ev := e.rec.wait(t, id, ActionStopped, time.Second); ev.Attributes["exit_code"] != "0" {
			t.Errorf("%s stopped %v", id, ev.Attributes)
		}
		e.rec.wait(t, id, ActionRemoved, time.Second)
	}
	if dirs := e.sandboxDirs(t); len(dirs) != 0 {
		t.Errorf("dirs left: %v", dirs)
	}
	if _, err := os.Stat(filepath.Join(e.dataDir, "sandboxes")); err != nil {
		t.Errorf("sandboxes dir: %v", err)
	}
	if !errors.Is(func() error { _, err := e.m.Create(ctx, CreateRequest{}); return err }(), errdefs.ErrUnavailable) {
		t.Error("create after shutdown did not fail with Unavailable")
	}
}
