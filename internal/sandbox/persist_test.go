package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/store"
)

// openStore opens a fresh store in dir, closed at the end of the test.
func openStore(t *testing.T, dir string) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(dir, "state.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// storedState returns a sandbox's stored state, or "" without a record.
func storedState(t *testing.T, st *store.Store, id string) (store.SandboxRecord, string) {
	t.Helper()
	rec, err := st.GetSandbox(context.Background(), id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return rec, ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return rec, rec.State
}

// waitStored waits (up to 5 s) until the store has id in state want.
func waitStored(t *testing.T, st *store.Store, id string, want State) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, state := storedState(t, st, id); state == string(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s not stored as %s after 5s", id, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Every state change is in the store when the call that made it returns.
func TestPersistLifecycleFake(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, t.TempDir())
	e := newTestEnv(t, dir, &fakeRuntime{}, func(c *Config) { c.Store = st })
	ctx := ctxT(t, 10*time.Second)
	s, err := e.m.Create(ctx, CreateRequest{Labels: map[string]string{"a": "b"}, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if rec, state := storedState(t, st, s.ID); state != string(StateStarting) && state != string(StateReady) ||
		rec.Labels["a"] != "b" || rec.ExpiresAt.IsZero() || rec.Dir != s.Dir {
		t.Fatalf("stored after create: %+v", rec)
	}
	e.waitState(t, s.ID, StateReady, 5*time.Second)
	// A background change (the boot's ready) is written after it is
	// visible, outside the sandbox's lock.
	waitStored(t, st, s.ID, StateReady)
	if rec, state := storedState(t, st, s.ID); state != string(StateReady) || rec.Process.PID == 0 ||
		rec.Process.APISocket != s.Process.APISocket {
		t.Fatalf("stored when ready: %+v", rec)
	}
	if _, err := e.m.Stop(ctx, s.ID, 0); err != nil {
		t.Fatal(err)
	}
	if rec, state := storedState(t, st, s.ID); state != string(StateStopped) || rec.Process.PID != 0 || rec.StoppedAt.IsZero() {
		t.Fatalf("stored after stop: %+v", rec)
	}
	if err := e.m.Remove(ctx, s.ID, false); err != nil {
		t.Fatal(err)
	}
	if _, state := storedState(t, st, s.ID); state != "" {
		t.Fatalf("record left after remove: state %q", state)
	}
}

// Recover re-registers stored sandboxes: a final one as it was, one whose
// VMM is gone as stopped (failed if it was starting) with an event, an
// expired one removed; and a directory no record owns is removed.
func TestRecoverFake(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, t.TempDir())
	ctx := ctxT(t, 10*time.Second)
	sbDir := func(id string) string {
		d := filepath.Join(dir, "sandboxes", id)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		return d
	}
	now := time.Now()
	const deadPID = 99999999 // above any pid_max
	recs := []store.SandboxRecord{
		{ID: "aaaaaaaaaaaa", State: "stopped", Dir: sbDir("aaaaaaaaaaaa"), CreatedAt: now},
		{ID: "bbbbbbbbbbbb", State: "ready", Dir: sbDir("bbbbbbbbbbbb"), CreatedAt: now,
			Process: store.ProcessRecord{PID: deadPID, PIDStartTime: 1}},
		{ID: "cccccccccccc", State: "starting", Dir: sbDir("cccccccccccc"), CreatedAt: now},
		{ID: "dddddddddddd", State: "failed", Dir: sbDir("dddddddddddd"), CreatedAt: now,
			TTL: time.Second, ExpiresAt: now.Add(-time.Second)},
		{ID: "eeeeeeeeeeee", State: "stopped", Dir: sbDir("eeeeeeeeeeee"), CreatedAt: now,
			TTL: time.Hour, ExpiresAt: now.Add(time.Hour)},
	}
	for _, r := range recs {
		if err := st.PutSandbox(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	stray := sbDir("ffffffffffff")

	e := newTestEnv(t, dir, &fakeRuntime{}, func(c *Config) { c.Store = st })
	if err := e.m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		id     string
		want   State // "" means removed
		action string
	}{
		{"aaaaaaaaaaaa", StateStopped, ""},
		{"bbbbbbbbbbbb", StateStopped, ActionExited},
		{"cccccccccccc", StateFailed, ActionFailed},
		{"dddddddddddd", "", ActionRemoved},
		{"eeeeeeeeeeee", StateStopped, ""},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			got, err := e.m.Get(ctx, tt.id)
			switch {
			case tt.want == "" && !errors.Is(err, errdefs.ErrNotFound):
				t.Errorf("get = %+v, %v; want not found", got, err)
			case tt.want != "" && (err != nil || got.State != tt.want):
				t.Errorf("get = %v, %v; want %s", got.State, err, tt.want)
			}
			if _, state := storedState(t, st, tt.id); state != string(tt.want) {
				t.Errorf("stored state %q, want %q", state, tt.want)
			}
			if tt.action != "" {
				e.rec.wait(t, tt.id, tt.action, 2*time.Second)
			}
		})
	}
	if got, _ := e.m.Get(ctx, "bbbbbbbbbbbb"); got.Process.PID != 0 || !contains(got.FailureReason, "daemon was down") {
		t.Errorf("dead VMM's sandbox: %+v", got)
	}
	if _, err := os.Stat(stray); !os.IsNotExist(err) {
		t.Errorf("stray sandbox directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "sandboxes", "dddddddddddd")); !os.IsNotExist(err) {
		t.Errorf("expired sandbox directory: %v", err)
	}
}

// With a store, snapshots are the catalog's alone: Checkpoint and
// DeleteSnapshot change what it lists, and the sandbox's record only names
// its last snapshot.
func TestSnapshotsLiveInTheCatalogFake(t *testing.T) {
	st := openStore(t, t.TempDir())
	e := newSnapEnv(t, &fakeRuntime{}, func(c *Config) { c.Store = st })
	ctx := t.Context()
	s := e.ready(t, CreateRequest{})
	ids := func() []string {
		metas, err := e.m.ListSnapshots(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range metas {
			out = append(out, m.ID)
		}
		slices.Sort(out)
		return out
	}
	a, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "b"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{a.ID, b.ID}
	slices.Sort(want)
	if got := ids(); !slices.Equal(got, want) {
		t.Fatalf("snapshots after two checkpoints: %v, want %v", got, want)
	}
	if rec, _ := storedState(t, st, s.ID); rec.LastSnapshotID != b.ID {
		t.Fatalf("stored last snapshot %q, want %q", rec.LastSnapshotID, b.ID)
	}
	if err := e.m.DeleteSnapshot(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	if got := ids(); !slices.Equal(got, []string{a.ID}) {
		t.Fatalf("snapshots after deleting b: %v, want [%s]", got, a.ID)
	}
	e.assertNoPartialSnapshot(t, 1)
}

// A sandbox whose record cannot be written is not created: Create fails,
// the boot that had started meanwhile is cancelled or its VMM killed, and
// nothing is left (no sandbox, directory or VMM).
func TestCreateFailsCleanlyWhenTheRecordCannotBeWritten(t *testing.T) {
	for _, delay := range []time.Duration{0, 50 * time.Millisecond} {
		t.Run(delay.String(), func(t *testing.T) {
			st, err := store.Open(filepath.Join(t.TempDir(), "state.db"), store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Close(); err != nil { // every write now fails with ErrClosed
				t.Fatal(err)
			}
			rt := &fakeRuntime{startDelay: delay}
			e := newTestEnv(t, t.TempDir(), rt, func(c *Config) { c.Store = st })
			_, err = e.m.Create(t.Context(), CreateRequest{})
			if !errors.Is(err, store.ErrClosed) {
				t.Fatalf("Create = %v, want the store's error", err)
			}
			if list, _ := e.m.List(t.Context(), ListFilter{}); len(list) != 0 {
				t.Fatalf("sandboxes after a failed create: %+v", list)
			}
			if dirs := e.sandboxDirs(t); len(dirs) != 0 {
				t.Fatalf("directories after a failed create: %v", dirs)
			}
			if n := rt.live(); n != 0 {
				t.Fatalf("%d VMMs live after a failed create", n)
			}
		})
	}
}
