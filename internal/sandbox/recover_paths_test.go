package sandbox

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/store"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// foreignDir returns a directory outside the data dir holding a marker
// file, and a check that both are untouched.
func foreignDir(t *testing.T) (dir, marker string, untouched func()) {
	t.Helper()
	dir = t.TempDir()
	marker = filepath.Join(dir, "marker")
	if err := os.WriteFile(marker, []byte("not the daemon's"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, marker, func() {
		t.Helper()
		if data, err := os.ReadFile(marker); err != nil || string(data) != "not the daemon's" {
			t.Errorf("the foreign marker file: %q, %v", data, err)
		}
	}
}

// tamperRecord rewrites sandbox id's stored record with patch.
func tamperRecord(t *testing.T, st *store.Store, id string, patch func(r *store.SandboxRecord)) {
	t.Helper()
	r, err := st.GetSandbox(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	patch(&r)
	if err := st.PutSandbox(t.Context(), r); err != nil {
		t.Fatal(err)
	}
}

// assertOwnPaths checks that every path of s is the one derived from its
// id in dataDir.
func assertOwnPaths(t *testing.T, dataDir string, s Sandbox) {
	t.Helper()
	dir := filepath.Join(dataDir, "sandboxes", s.ID)
	want := map[string]string{
		"dir": dir, "disk": filepath.Join(dir, DiskName), "api socket": filepath.Join(dir, "firecracker.sock"),
		"console": filepath.Join(dir, "console.log"), "log": filepath.Join(dir, "firecracker.log"),
		"metrics": filepath.Join(dir, "firecracker.metrics"), "vsock": filepath.Join(dir, VsockName), "chroot": "",
	}
	got := map[string]string{
		"dir": s.Dir, "disk": s.Hardware.Disk, "api socket": s.Process.APISocket, "console": s.Process.ConsolePath,
		"log": s.Process.LogPath, "metrics": s.Process.MetricsPath, "vsock": s.Process.VsockPath, "chroot": s.Process.Chroot,
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %q, want %q", k, got[k], w)
		}
	}
}

// A stored record whose paths point elsewhere (here: at a directory with
// a marker file outside the data dir) is never trusted: recovery does not
// adopt its VMM (the sandbox fails, with the reason, had it been live),
// every path the sandbox then has is derived from its id, the store gets
// those, and neither recovery, a checkpoint attempt nor Remove touches
// the foreign files.
func TestRecoverDerivesPathsFake(t *testing.T) {
	patches := []struct {
		field string
		patch func(r *store.SandboxRecord, dir, marker string)
	}{
		{"directory", func(r *store.SandboxRecord, dir, _ string) { r.Dir = dir }},
		{"disk", func(r *store.SandboxRecord, _, marker string) { r.Hardware.Disk = marker }},
		{"API socket", func(r *store.SandboxRecord, _, marker string) { r.Process.APISocket = marker }},
		{"console", func(r *store.SandboxRecord, _, marker string) { r.Process.ConsolePath = marker }},
		{"log", func(r *store.SandboxRecord, _, marker string) { r.Process.LogPath = marker }},
		{"metrics", func(r *store.SandboxRecord, _, marker string) { r.Process.MetricsPath = marker }},
		{"vsock socket", func(r *store.SandboxRecord, _, marker string) { r.Process.VsockPath = marker }},
		{"chroot", func(r *store.SandboxRecord, dir, _ string) { r.Process.Chroot, r.Process.Jailed = dir, true }},
	}
	for _, stopped := range []bool{false, true} {
		for _, p := range patches {
			name := p.field + " of a ready sandbox"
			if stopped {
				name = p.field + " of a stopped sandbox"
			}
			t.Run(name, func(t *testing.T) {
				rt := &fakeRuntime{}
				dataDir, st, sbs := leaveWith(t, 1, rt)
				s := sbs[0]
				if stopped {
					tamperRecord(t, st, s.ID, func(r *store.SandboxRecord) {
						r.State, r.Process.PID, r.Process.PIDStartTime = string(StateStopped), 0, 0
					})
				}
				dir, marker, untouched := foreignDir(t)
				tamperRecord(t, st, s.ID, func(r *store.SandboxRecord) { p.patch(r, dir, marker) })

				next := startLife(t, dataDir, st, rt)
				ctx := ctxT(t, 10*time.Second)
				if err := next.m.Recover(ctx); err != nil {
					t.Fatal(err)
				}
				if slices.Contains(rt.callLog(), "adopt") {
					t.Errorf("a VMM was adopted through an untrusted record: %v", rt.callLog())
				}
				got, err := next.m.Get(ctx, s.ID)
				if err != nil {
					t.Fatal(err)
				}
				wantState := StateFailed
				if stopped {
					wantState = StateStopped
				}
				if got.State != wantState || got.Process.PID != 0 {
					t.Errorf("state %s pid %d, want %s without a VMM", got.State, got.Process.PID, wantState)
				}
				if !stopped && (!strings.Contains(got.FailureReason, "not its own") || !strings.Contains(got.FailureReason, p.field)) {
					t.Errorf("failure reason %q, want it to name the %s", got.FailureReason, p.field)
				}
				assertOwnPaths(t, dataDir, got)
				stored, err := st.GetSandbox(ctx, s.ID)
				if err != nil {
					t.Fatal(err)
				}
				assertOwnPaths(t, dataDir, sandboxOf(stored))
				if _, err := next.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "x"}); err == nil {
					t.Error("checkpoint of an unadopted sandbox succeeded")
				}
				if err := next.m.Remove(ctx, s.ID, false); err != nil {
					t.Fatal(err)
				}
				untouched()
				if got := next.sandboxDirs(t); len(got) != 0 {
					t.Errorf("sandbox directories after remove: %v", got)
				}
			})
		}
	}
}

// With a real VMM (the emulator), a record whose vsock socket path names a
// foreign file would have that file removed as root when the adopted VMM
// was stopped (its sockets are cleaned up): recovery does not adopt the
// VMM, kills it as a stray, and the file survives the sandbox's removal.
func TestEmulatorRecoverIgnoresForeignPaths(t *testing.T) {
	st := openStore(t, t.TempDir())
	first, exe := emuEnv(t, func(c *Config) { c.Store, c.OnShutdown = st, ShutdownLeave })
	ctx := ctxT(t, 30*time.Second)
	s, err := first.m.Create(ctx, CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	s = first.waitState(t, s.ID, StateReady, 10*time.Second)
	waitStored(t, st, s.ID, StateReady)
	if err := first.m.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if !testutil.Alive(s.Process.PID) {
		t.Fatal("the VMM did not outlive the first daemon")
	}
	_, marker, untouched := foreignDir(t)
	tamperRecord(t, st, s.ID, func(r *store.SandboxRecord) { r.Process.VsockPath = marker })

	l := &vmm.DirectLauncher{Config: vmm.Config{
		Binary: exe, SocketTimeout: 10 * time.Second, Env: []string{"FCEMU_SKIP_TAP=1"},
	}}
	next := newTestEnv(t, first.dataDir, nil, func(c *Config) {
		c.Launcher, c.Store, c.DefaultMemoryMiB = l, st, 128
	})
	if err := next.m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := next.m.Get(ctx, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != StateFailed || !strings.Contains(got.FailureReason, "vsock socket") {
		t.Errorf("state %s reason %q, want failed naming the vsock socket", got.State, got.FailureReason)
	}
	if testutil.Alive(s.Process.PID) {
		t.Error("the unadopted VMM still runs")
	}
	// --force: had the VMM been adopted, its stop would clean up its
	// sockets.
	if err := next.m.Remove(ctx, s.ID, true); err != nil {
		t.Fatal(err)
	}
	untouched()
}
