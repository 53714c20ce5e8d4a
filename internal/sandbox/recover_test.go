package sandbox

import (
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/snapshot"
	"github.com/firecracker-vmm/firecracker-vmm/internal/store"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// daemonLife is one run of a manager over a data dir and a store that
// outlive it, on a fake runtime whose machines (like VMMs) outlive it too.
type daemonLife struct {
	*testEnv
	st *store.Store
}

// startLife starts a manager in leave mode over dataDir and st, with a
// snapshot catalog and small memory.
func startLife(t *testing.T, dataDir string, st *store.Store, rt *fakeRuntime) *daemonLife {
	t.Helper()
	var cat *snapshot.Catalog
	e := newTestEnv(t, dataDir, rt, withCatalog(t, dataDir, &cat, func(c *Config) {
		c.Store, c.OnShutdown, c.DefaultMemoryMiB = st, ShutdownLeave, 128
	}))
	return &daemonLife{testEnv: e, st: st}
}

// leaveWith creates n ready sandboxes (dirty pages tracked) in a first
// life and shuts it down, leaving their machines running; it returns the
// data dir, the store and the sandboxes.
func leaveWith(t *testing.T, n int, rt *fakeRuntime) (string, *store.Store, []Sandbox) {
	t.Helper()
	dataDir := t.TempDir()
	st := openStore(t, t.TempDir())
	first := startLife(t, dataDir, st, rt)
	var out []Sandbox
	for range n {
		s, err := first.m.Create(t.Context(), CreateRequest{TrackDirtyPages: true})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, first.waitState(t, s.ID, StateReady, 5*time.Second))
		waitStored(t, st, s.ID, StateReady)
	}
	if err := first.m.Shutdown(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	return dataDir, st, out
}

// Recovery goes through the runtime's Adopt: a VMM that is still the
// recorded one is adopted and works like a new one (checkpoints, Full and
// Diff, stop); one that cannot be adopted, or whose pid now belongs to
// another process, is recorded as stopped and that process is left alone.
func TestRecoverThroughAdoptFake(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, rt *fakeRuntime, s Sandbox)
		// adopted: the sandbox comes back READY on the same pid.
		adopted bool
	}{
		{name: "adopt succeeds", adopted: true},
		{name: "adopt succeeds and resumes a VM left paused", adopted: true,
			setup: func(t *testing.T, rt *fakeRuntime, s Sandbox) {
				if err := rt.machineOf(t, s.Process.PID).Pause(t.Context()); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "adopt fails", setup: func(t *testing.T, rt *fakeRuntime, s Sandbox) {
			rt.setFaults(fakeFaults{adoptErr: errors.New("the API socket does not answer")})
		}},
		{name: "pid reused by another process", setup: func(t *testing.T, rt *fakeRuntime, s Sandbox) {
			if rt.reusePid(s.ID) == nil {
				t.Fatal("no machine to reuse")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &fakeRuntime{}
			dataDir, st, sbs := leaveWith(t, 1, rt)
			s := sbs[0]
			mach := rt.machineOf(t, s.Process.PID)
			if tt.setup != nil {
				tt.setup(t, rt, s)
			}
			next := startLife(t, dataDir, st, rt)
			ctx := ctxT(t, 10*time.Second)
			if err := next.m.Recover(ctx); err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(rt.callLog(), "adopt") {
				t.Fatalf("recovery did not go through Adopt: %v", rt.callLog())
			}
			got, err := next.m.Get(ctx, s.ID)
			if err != nil {
				t.Fatal(err)
			}
			select {
			case <-mach.Done():
				t.Fatal("recovery killed the process")
			default:
			}
			if !tt.adopted {
				if got.State != StateStopped || got.Process.PID != 0 || !contains(got.FailureReason, "daemon was down") {
					t.Fatalf("not adopted: %s pid %d %q; want stopped, no pid, died while down", got.State, got.Process.PID, got.FailureReason)
				}
				next.rec.wait(t, s.ID, ActionExited, 2*time.Second)
				if err := next.m.Remove(ctx, s.ID, false); err != nil {
					t.Fatal(err)
				}
				return
			}
			if got.State != StateReady || got.Process.PID != s.Process.PID {
				t.Fatalf("adopted: %s pid %d; want ready on pid %d", got.State, got.Process.PID, s.Process.PID)
			}
			if mach.isPaused() {
				t.Fatal("the adopted VM is still paused")
			}
			// The adopted sandbox checkpoints like a new one, Full then
			// Diff, and is running afterwards.
			full, err := next.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "full"})
			if err != nil {
				t.Fatalf("Full checkpoint of an adopted sandbox: %v", err)
			}
			diff, err := next.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "diff", Diff: true})
			if err != nil || diff.ParentID != full.ID {
				t.Fatalf("Diff checkpoint of an adopted sandbox: %+v, %v", diff, err)
			}
			if mach.isPaused() {
				t.Fatal("the VM is paused after the checkpoints")
			}
			r, err := next.m.Restore(ctx, RestoreRequest{SnapshotID: diff.ID})
			if err != nil {
				t.Fatal(err)
			}
			next.waitState(t, r.ID, StateReady, 5*time.Second)
			if got, err := next.m.Stop(ctx, s.ID, 0); err != nil || got.State != StateStopped {
				t.Fatalf("stop of an adopted sandbox: %v, %v", got.State, err)
			}
			if _, state := storedState(t, st, s.ID); state != string(StateStopped) {
				t.Fatalf("stored %q after stop, want stopped", state)
			}
		})
	}
}

// An adopted VMM whose guest shuts down cleanly (the exit status is known:
// vmm reads it from the VMM's log when the VMM is not the daemon's child)
// ends STOPPED, like a new one.
func TestAdoptedCleanExitIsStoppedFake(t *testing.T) {
	rt := &fakeRuntime{}
	dataDir, st, sbs := leaveWith(t, 1, rt)
	next := startLife(t, dataDir, st, rt)
	ctx := ctxT(t, 10*time.Second)
	if err := next.m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	id := sbs[0].ID
	next.waitState(t, id, StateReady, time.Second)
	rt.machineOf(t, sbs[0].Process.PID).exit(vmm.ExitStatus{Known: true, FromLog: true})
	ev := next.rec.wait(t, id, ActionExited, 5*time.Second)
	if ev.State != string(StateStopped) {
		t.Fatalf("exited event in state %s, want stopped", ev.State)
	}
	waitStored(t, st, id, StateStopped)
}

// Adoption runs concurrently: each Adopt waits for all of them to have
// started, which only happens when they run at once (a serial recovery
// gives up waiting after 10 s and fails).
func TestRecoverAdoptsConcurrentlyFake(t *testing.T) {
	const n = 8
	rt := &fakeRuntime{}
	dataDir, st, _ := leaveWith(t, n, rt)
	arrived := make(chan struct{}, n)
	all := make(chan struct{})
	rt.mu.Lock()
	var serial atomic.Bool
	rt.adoptHook = func() {
		arrived <- struct{}{}
		select {
		case <-all:
		case <-time.After(10 * time.Second):
			serial.Store(true)
		}
	}
	rt.mu.Unlock()
	go func() {
		for range n {
			<-arrived
		}
		close(all)
	}()
	next := startLife(t, dataDir, st, rt)
	ctx := ctxT(t, 30*time.Second)
	if err := next.m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if serial.Load() {
		t.Fatal("the VMMs were not adopted concurrently")
	}
	list, err := next.m.List(ctx, ListFilter{States: []State{StateReady}})
	if err != nil || len(list) != n {
		t.Fatalf("%d ready after recovery (%v), want %d", len(list), err, n)
	}
}
