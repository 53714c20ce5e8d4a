package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

func TestLifecycleFake(t *testing.T) {
	rt := &fakeRuntime{}
	e := newTestEnv(t, t.TempDir(), rt, nil)
	ctx := ctxT(t, 10*time.Second)
	s, err := e.m.Create(ctx, CreateRequest{VCPUs: 2, MemoryMiB: 256, Labels: map[string]string{"env": "dev"}})
	if err != nil {
		t.Fatal(err)
	}
	if !ValidID(s.ID) || s.State != StateStarting || s.CreatedAt.IsZero() {
		t.Fatalf("created %+v", s)
	}
	dir := filepath.Join(e.dataDir, "sandboxes", s.ID)
	if s.Dir != dir || s.Hardware.Disk != filepath.Join(dir, DiskName) || s.Hardware.Rootfs != e.rootfs {
		t.Errorf("paths: dir %s disk %s rootfs %s", s.Dir, s.Hardware.Disk, s.Hardware.Rootfs)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("sandbox dir: %v %v", fi.Mode(), err)
	}
	data, err := os.ReadFile(s.Hardware.Disk)
	if err != nil || len(data) != 8<<20 || string(data[1<<20:1<<20+11]) != "rootfs-data" {
		t.Errorf("disk copy: %d bytes, %v", len(data), err)
	}
	ready := e.waitState(t, s.ID, StateReady, 5*time.Second)
	if ready.Process.PID == 0 || ready.ReadyAt.IsZero() || ready.Labels["env"] != "dev" {
		t.Errorf("ready record %+v", ready)
	}
	// The boot got the sandbox's own disk as the root drive and a vsock
	// device (both relative to the VMM's working directory, the sandbox
	// directory), and the log, metrics, console and socket paths inside
	// its directory.
	spec := rt.specs[0]
	want := vmm.DriveSpec{ID: "rootfs", Path: DiskName, Root: true}
	if s.Hardware.Disk != filepath.Join(dir, DiskName) || spec.Dir != dir {
		t.Errorf("disk %s, VMM directory %s", s.Hardware.Disk, spec.Dir)
	}
	if spec.Vsock == nil || *spec.Vsock != (vmm.VsockSpec{CID: 3, UDSPath: "vsock.sock"}) ||
		s.Process.VsockPath != filepath.Join(dir, "vsock.sock") {
		t.Errorf("vsock %+v, recorded %q", spec.Vsock, s.Process.VsockPath)
	}
	if len(spec.Drives) != 1 || spec.Drives[0] != want || spec.VCPUs != 2 || spec.MemoryMiB != 256 ||
		spec.Kernel != KernelName || spec.BootArgs != DefaultBootArgs || spec.NICs != nil ||
		spec.APISocket != filepath.Join(dir, SocketName) || spec.ConsolePath != filepath.Join(dir, ConsoleName) ||
		spec.Logging.LogPath != filepath.Join(dir, LogName) || spec.Logging.MetricsPath != filepath.Join(dir, MetricsName) {
		t.Errorf("spec %+v", spec)
	}

	stopped, err := e.m.Stop(ctx, s.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if stopped.State != StateStopped || stopped.Process.PID != 0 || stopped.StoppedAt.IsZero() {
		t.Errorf("stopped record %+v", stopped)
	}
	if _, err := e.m.Stop(ctx, s.ID, 0); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("second stop: %v, want FailedPrecondition", err)
	}
	if err := e.m.Remove(ctx, s.ID, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dir left: %v", err)
	}
	if _, err := e.m.Get(ctx, s.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("get after remove: %v", err)
	}
	if err := e.m.Remove(ctx, s.ID, true); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("second remove: %v", err)
	}
	e.rec.expect(t, s.ID, "created/starting", "ready/ready", "stopping/stopping", "stopped/stopped", "removed/stopped")
	evs := e.rec.of(s.ID)
	for i, ev := range evs {
		if ev.Time.IsZero() || (i > 0 && (ev.Seq <= evs[i-1].Seq || ev.Time.Before(evs[i-1].Time))) {
			t.Errorf("event %d out of order: %+v", i, ev)
		}
	}
	if evs[3].Attributes["exit_code"] != "0" || evs[3].Attributes["forced"] != "false" {
		t.Errorf("stopped attributes %v", evs[3].Attributes)
	}
}

func TestStopTimeoutFake(t *testing.T) {
	rt := &fakeRuntime{ignoreCAD: true}
	e := newTestEnv(t, t.TempDir(), rt, nil)
	s, err := e.m.Create(t.Context(), CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	e.waitState(t, s.ID, StateReady, 5*time.Second)
	start := time.Now()
	if _, err := e.m.Stop(t.Context(), s.ID, 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 200*time.Millisecond || d > 2*time.Second {
		t.Errorf("stop took %v, want about the 200ms timeout", d)
	}
	ev := e.rec.wait(t, s.ID, ActionStopped, time.Second)
	if ev.Attributes["forced"] != "true" || ev.Attributes["signal"] != syscall.SIGKILL.String() {
		t.Errorf("stopped attributes %v", ev.Attributes)
	}
	if _, err := e.m.Stop(t.Context(), s.ID, -time.Second); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("negative timeout: %v", err)
	}
}

func TestVMMExitsOnItsOwnFake(t *testing.T) {
	tests := []struct {
		name   string
		status vmm.ExitStatus
		want   State
	}{
		{"guest halt", vmm.ExitStatus{Known: true}, StateStopped},
		{"crash", vmm.ExitStatus{Known: true, Code: 1}, StateFailed},
		{"signal", vmm.ExitStatus{Known: true, Signal: syscall.SIGSEGV}, StateFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &fakeRuntime{exitAfter: 100 * time.Millisecond, exitWith: tt.status}
			e := newTestEnv(t, t.TempDir(), rt, nil)
			s, err := e.m.Create(t.Context(), CreateRequest{})
			if err != nil {
				t.Fatal(err)
			}
			ev := e.rec.wait(t, s.ID, ActionExited, 5*time.Second)
			if ev.State != string(tt.want) || ev.Attributes["exit_status"] != tt.status.String() || ev.Attributes["reason"] == "" {
				t.Errorf("exited event %+v", ev)
			}
			got := e.waitState(t, s.ID, tt.want, time.Second)
			if got.FailureReason == "" || got.Process.PID != 0 || got.StoppedAt.IsZero() {
				t.Errorf("record %+v", got)
			}
			e.rec.expect(t, s.ID, "created/starting", "ready/ready", "exited/"+string(tt.want))
			if err := e.m.Remove(t.Context(), s.ID, false); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestBootFailureFake(t *testing.T) {
	rt := &fakeRuntime{startErr: errors.New("boot-source: boom")}
	e := newTestEnv(t, t.TempDir(), rt, nil)
	s, err := e.m.Create(t.Context(), CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ev := e.rec.wait(t, s.ID, ActionFailed, 5*time.Second)
	if ev.State != string(StateFailed) || ev.Attributes["reason"] != "boot-source: boom" {
		t.Errorf("failed event %+v", ev)
	}
	got, _ := e.m.Get(t.Context(), s.ID)
	if got.State != StateFailed || got.FailureReason != "boot-source: boom" {
		t.Errorf("record %+v", got)
	}
	// The directory stays (console.log can be read) until Remove.
	if _, err := os.Stat(got.Dir); err != nil {
		t.Errorf("dir gone before remove: %v", err)
	}
	if _, err := e.m.Stop(t.Context(), s.ID, 0); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("stop of failed: %v", err)
	}
	if err := e.m.Remove(t.Context(), s.ID, false); err != nil {
		t.Fatal(err)
	}
	if dirs := e.sandboxDirs(t); len(dirs) != 0 {
		t.Errorf("dirs left: %v", dirs)
	}
}

func TestBootTimeoutFake(t *testing.T) {
	rt := &fakeRuntime{startDelay: time.Hour}
	e := newTestEnv(t, t.TempDir(), rt, func(c *Config) { c.BootTimeout = 200 * time.Millisecond })
	s, err := e.m.Create(t.Context(), CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ev := e.rec.wait(t, s.ID, ActionFailed, 5*time.Second)
	if r := ev.Attributes["reason"]; !contains(r, "did not finish within 200ms") {
		t.Errorf("reason %q", r)
	}
}

func TestRemoveNeedsForceFake(t *testing.T) {
	rt := &fakeRuntime{}
	e := newTestEnv(t, t.TempDir(), rt, nil)
	s, err := e.m.Create(t.Context(), CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	e.waitState(t, s.ID, StateReady, 5*time.Second)
	err = e.m.Remove(t.Context(), s.ID, false)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !contains(err.Error(), "--force") || !contains(err.Error(), "ready") {
		t.Fatalf("remove without force: %v", err)
	}
	if err := e.m.Remove(t.Context(), s.ID, true); err != nil {
		t.Fatal(err)
	}
	e.rec.expect(t, s.ID, "created/starting", "ready/ready", "stopping/stopping", "stopped/stopped", "removed/stopped")
	if rt.live() != 0 {
		t.Error("machine still running")
	}
}

func TestRemoveWhileStartingFake(t *testing.T) {
	rt := &fakeRuntime{startDelay: time.Hour}
	e := newTestEnv(t, t.TempDir(), rt, nil)
	s, err := e.m.Create(t.Context(), CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := e.m.Remove(t.Context(), s.ID, true); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("remove took %v", d)
	}
	e.rec.expect(t, s.ID, "created/starting", "stopping/stopping", "stopped/stopped", "removed/stopped")
	if ev := e.rec.wait(t, s.ID, ActionStopped, time.Second); ev.Attributes["boot_cancelled"] != "true" {
		t.Errorf("stopped attributes %v", ev.Attributes)
	}
}

func TestStopWhileStartingFake(t *testing.T) {
	rt := &fakeRuntime{startDelay: time.Hour}
	e := newTestEnv(t, t.TempDir(), rt, nil)
	s, err := e.m.Create(t.Context(), CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.m.Stop(t.Context(), s.ID, 0)
	if err != nil || got.State != StateStopped {
		t.Fatalf("stop: %v %+v", err, got)
	}
}

func TestTTLFake(t *testing.T) {
	rt := &fakeRuntime{}
	e := newTestEnv(t, t.TempDir(), rt, nil)
	s, err := e.m.Create(t.Context(), CreateRequest{TTL: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if s.TTL != 300*time.Millisecond || !s.ExpiresAt.Equal(s.CreatedAt.Add(s.TTL)) {
		t.Errorf("ttl %v expires %v created %v", s.TTL, s.ExpiresAt, s.CreatedAt)
	}
	ev := e.rec.wait(t, s.ID, ActionRemoved, 5*time.Second)
	if ev.Attributes["reason"] != "ttl" {
		t.Errorf("removed event %+v", ev)
	}
	e.rec.expect(t, s.ID, "created/starting", "ready/ready", "expired/ready", "stopping/stopping", "stopped/stopped", "removed/stopped")
	expired := e.rec.of(s.ID)[2]
	if expired.Attributes["reason"] != "ttl" || expired.Time.Sub(s.CreatedAt) < 300*time.Millisecond {
		t.Errorf("expired event %+v", expired)
	}
	if _, err := e.m.Get(t.Context(), s.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("get: %v", err)
	}
	if dirs := e.sandboxDirs(t); len(dirs) != 0 {
		t.Errorf("dirs left: %v", dirs)
	}
	// A removed sandbox's timer does not fire.
	s2, err := e.m.Create(t.Context(), CreateRequest{TTL: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.m.Remove(t.Context(), s2.ID, true); err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	if slices.Contains(e.rec.actions(s2.ID), "expired/stopped") {
		t.Errorf("expired after remove: %v", e.rec.actions(s2.ID))
	}
}

func TestIDsValidatedOnEveryCall(t *testing.T) {
	e := newTestEnv(t, t.TempDir(), &fakeRuntime{}, nil)
	ctx := t.Context()
	for _, id := range []string{"", "x", "../../../etc", "01HZY3K5M7Q9", "01hzy3k5m7qu"} {
		if _, err := e.m.Get(ctx, id); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("get %q: %v", id, err)
		}
		if _, err := e.m.Stop(ctx, id, 0); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("stop %q: %v", id, err)
		}
		if err := e.m.Remove(ctx, id, true); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("remove %q: %v", id, err)
		}
	}
	const unknown = "01hzy3k5m7q9"
	if _, err := e.m.Get(ctx, unknown); !errors.Is(err, errdefs.ErrNotFound) || !contains(err.Error(), unknown) {
		t.Errorf("get unknown: %v", err)
	}
	if _, err := e.m.Stop(ctx, unknown, 0); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("stop unknown: %v", err)
	}
	if err := e.m.Remove(ctx, unknown, false); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("remove unknown: %v", err)
	}
}

func TestListFilters(t *testing.T) {
	rt := &fakeRuntime{}
	e := newTestEnv(t, t.TempDir(), rt, nil)
	ctx := t.Context()
	mk := func(labels map[string]string) string {
		s, err := e.m.Create(ctx, CreateRequest{Labels: labels})
		if err != nil {
			t.Fatal(err)
		}
		e.waitState(t, s.ID, StateReady, 5*time.Second)
		return s.ID
	}
	a := mk(map[string]string{"env": "dev", "owner": "alice"})
	b := mk(map[string]string{"env": "dev", "owner": "bob"})
	c := mk(map[string]string{"env": "prod"})
	if _, err := e.m.Stop(ctx, b, 0); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		f    ListFilter
		want []string
	}{
		{"all", ListFilter{}, []string{a, b, c}},
		{"ready", ListFilter{States: []State{StateReady}}, []string{a, c}},
		{"stopped or failed", ListFilter{States: []State{StateStopped, StateFailed}}, []string{b}},
		{"label", ListFilter{Labels: map[string]string{"env": "dev"}}, []string{a, b}},
		{"two labels", ListFilter{Labels: map[string]string{"env": "dev", "owner": "alice"}}, []string{a}},
		{"label and state", ListFilter{States: []State{StateReady}, Labels: map[string]string{"env": "dev"}}, []string{a}},
		{"no match", ListFilter{Labels: map[string]string{"env": "qa"}}, nil},
		{"empty value is a value", ListFilter{Labels: map[string]string{"owner": ""}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := e.m.List(ctx, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, s := range got {
				ids = append(ids, s.ID)
			}
			if !slices.Equal(ids, tt.want) {
				t.Errorf("got %v, want %v", ids, tt.want)
			}
		})
	}
	if _, err := e.m.List(ctx, ListFilter{States: []State{"READY"}}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("bad state filter: %v", err)
	}
	// Returned records are copies.
	l, _ := e.m.List(ctx, ListFilter{})
	l[0].Labels["env"] = "changed"
	if s, _ := e.m.Get(ctx, a); s.Labels["env"] != "dev" {
		t.Error("List returned a shared map")
	}
}

func TestGetNotBlockedBySlowStop(t *testing.T) {
	rt := &fakeRuntime{ignoreCAD: true}
	e := newTestEnv(t, t.TempDir(), rt, nil)
	s, err := e.m.Create(t.Context(), CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	e.waitState(t, s.ID, StateReady, 5*time.Second)
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := e.m.Stop(t.Context(), s.ID, time.Second); err != nil {
			t.Error(err)
		}
	})
	e.rec.wait(t, s.ID, ActionStopping, time.Second)
	start := time.Now()
	got, err := e.m.Get(t.Context(), s.ID)
	if err != nil || got.State != StateStopping {
		t.Errorf("get during stop: %v %v", got.State, err)
	}
	if _, err := e.m.List(t.Context(), ListFilter{}); err != nil {
		t.Error(err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("get/list took %v during a stop", d)
	}
	// A second operation on the same sandbox waits for the first one, and
	// honours its context while waiting.
	ctx, cancel := ctxWithTimeout(t, 100*time.Millisecond)
	defer cancel()
	if err := e.m.Remove(ctx, s.ID, true); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("remove while stopping: %v", err)
	}
	wg.Wait()
	if err := e.m.Remove(t.Context(), s.ID, false); err != nil {
		t.Fatal(err)
	}
}

func TestParallelOperationsFake(t *testing.T) {
	rt := &fakeRuntime{ignoreCAD: true}
	e := newTestEnv(t, t.TempDir(), rt, nil)
	var ids []string
	for range 4 {
		s, err := e.m.Create(t.Context(), CreateRequest{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID)
	}
	for _, id := range ids {
		e.waitState(t, id, StateReady, 5*time.Second)
	}
	// Four stops that each take the 300ms timeout run in parallel.
	start := time.Now()
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Go(func() {
			if _, err := e.m.Stop(t.Context(), id, 300*time.Millisecond); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if d := time.Since(start); d > 1200*time.Millisecond {
		t.Errorf("4 stops took %v: not parallel", d)
	}
}

func TestShutdownFake(t *testing.T) {
	rt := &fakeRuntime{}
	e := newTestEnv(t, t.TempDir(), rt, nil)
	var ids []string
	for range 3 {
		s, err := e.m.Create(t.Context(), CreateRequest{TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID)
	}
	e.waitState(t, ids[0], StateReady, 5*time.Second)
	if err := e.m.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if rt.live() != 0 {
		t.Errorf("%d machines still running", rt.live())
	}
	for _, id := range ids {
		if _, err := e.m.Get(t.Context(), id); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("%s after shutdown: %v, want released (not found)", id, err)
		}
	}
	if _, err := e.m.Create(t.Context(), CreateRequest{}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("create after shutdown: %v", err)
	}
	if err := e.m.Shutdown(t.Context()); err != nil {
		t.Errorf("second shutdown: %v", err)
	}
	if dirs := e.sandboxDirs(t); len(dirs) != 0 {
		t.Errorf("dirs left: %v", dirs)
	}
}

func TestShutdownDeadlineKillsFake(t *testing.T) {
	rt := &fakeRuntime{ignoreCAD: true}
	e := newTestEnv(t, t.TempDir(), rt, func(c *Config) { c.StopTimeout = time.Hour })
	s, err := e.m.Create(t.Context(), CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	e.waitState(t, s.ID, StateReady, 5*time.Second)
	ctx, cancel := ctxWithTimeout(t, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := e.m.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("shutdown: %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("shutdown took %v", d)
	}
	if ev := e.rec.wait(t, s.ID, ActionStopped, time.Second); ev.Attributes["forced"] != "true" {
		t.Errorf("stopped %v", ev.Attributes)
	}
}
