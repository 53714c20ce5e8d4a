package sandbox

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// TestHostBudget runs sequences of creates, stops and removes against a
// host-wide budget: a create past it is ResourceExhausted and leaves
// nothing; stopped, failed and removed sandboxes give their share back.
func TestHostBudget(t *testing.T) {
	type step struct {
		op        string // "create", "stop" or "remove" (of the n-th created sandbox)
		vcpus     int
		memoryMiB int
		n         int
		exhausted bool // the create is refused
	}
	tests := []struct {
		name              string
		maxVCPUs, maxMiB  int
		startErr          bool
		steps             []step
		wantLive, wantDir int
	}{
		{"vcpus: up to the limit", 4, 0, false, []step{
			{op: "create", vcpus: 2}, {op: "create", vcpus: 2}, {op: "create", vcpus: 1, exhausted: true},
		}, 2, 2},
		{"vcpus: a big one past the limit", 4, 0, false, []step{
			{op: "create", vcpus: 1}, {op: "create", vcpus: 4, exhausted: true}, {op: "create", vcpus: 3},
		}, 2, 2},
		{"memory: up to the limit", 0, 1024, false, []step{
			{op: "create", memoryMiB: 512}, {op: "create", memoryMiB: 512}, {op: "create", memoryMiB: 128, exhausted: true},
		}, 2, 2},
		{"memory: default size counts", 0, 1000, false, []step{
			{op: "create"}, {op: "create", exhausted: true}, {op: "create", memoryMiB: 488},
		}, 2, 2},
		{"stopped gives back", 2, 0, false, []step{
			{op: "create", vcpus: 2}, {op: "create", vcpus: 1, exhausted: true}, {op: "stop", n: 0}, {op: "create", vcpus: 2},
		}, 1, 2},
		{"removed gives back", 0, 512, false, []step{
			{op: "create"}, {op: "create", exhausted: true}, {op: "remove", n: 0}, {op: "create"},
		}, 1, 1},
		{"failed boots count for nothing", 1, 512, true, []step{
			{op: "create"}, {op: "create"}, {op: "create"},
		}, 0, 3},
		{"no limit", 0, 0, false, []step{
			{op: "create", vcpus: 32, memoryMiB: 32768}, {op: "create", vcpus: 32, memoryMiB: 32768},
		}, 2, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &fakeRuntime{}
			if tt.startErr {
				rt.startErr = errors.New("no boot")
			}
			e := newTestEnv(t, t.TempDir(), rt, func(c *Config) {
				c.MaxTotalVCPUs, c.MaxTotalMemoryMiB = tt.maxVCPUs, tt.maxMiB
			})
			var created []string
			for i, st := range tt.steps {
				switch st.op {
				case "create":
					dirs := len(e.sandboxDirs(t))
					s, err := e.m.Create(t.Context(), CreateRequest{VCPUs: st.vcpus, MemoryMiB: st.memoryMiB})
					if st.exhausted {
						if !errors.Is(err, errdefs.ErrResourceExhausted) {
							t.Fatalf("step %d: %v, want ResourceExhausted", i, err)
						}
						if n := len(e.sandboxDirs(t)); n != dirs {
							t.Fatalf("step %d: the refused create left a directory (%d, was %d)", i, n, dirs)
						}
						continue
					}
					if err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
					want := StateReady
					if tt.startErr {
						want = StateFailed
					}
					e.waitState(t, s.ID, want, 5*time.Second)
					created = append(created, s.ID)
				case "stop":
					if _, err := e.m.Stop(t.Context(), created[st.n], 0); err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
				case "remove":
					if err := e.m.Remove(t.Context(), created[st.n], true); err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
				}
			}
			live, err := e.m.List(t.Context(), ListFilter{States: []State{StateStarting, StateReady, StateRunning, StateStopping}})
			if err != nil {
				t.Fatal(err)
			}
			if len(live) != tt.wantLive || len(e.sandboxDirs(t)) != tt.wantDir {
				t.Errorf("%d live sandboxes and %d dirs, want %d and %d", len(live), len(e.sandboxDirs(t)), tt.wantLive, tt.wantDir)
			}
			e.m.mu.Lock()
			reserved := e.m.reservedUse
			e.m.mu.Unlock()
			if reserved != (usage{}) {
				t.Errorf("budget still reserved after the creates returned: %+v", reserved)
			}
		})
	}
}

// TestHostBudgetConcurrentCreates races many creates, whose boots take a
// while (the sandboxes stay starting), against the budget: exactly as
// many as fit are accepted, the others are ResourceExhausted, and nothing
// of those is left.
func TestHostBudgetConcurrentCreates(t *testing.T) {
	tests := []struct {
		name             string
		maxVCPUs, maxMiB int
		vcpus, memoryMiB int
		n, wantOK        int
	}{
		{"vcpus", 10, 0, 1, 128, 40, 10},
		{"vcpus, two each", 9, 0, 2, 128, 30, 4},
		{"memory", 0, 1280, 1, 128, 40, 10},
		{"both, memory binds", 32, 640, 2, 128, 40, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &fakeRuntime{startDelay: 200 * time.Millisecond}
			e := newTestEnv(t, t.TempDir(), rt, func(c *Config) {
				c.MaxTotalVCPUs, c.MaxTotalMemoryMiB = tt.maxVCPUs, tt.maxMiB
			})
			var (
				wg        sync.WaitGroup
				mu        sync.Mutex
				ok, full  int
				otherErrs []error
			)
			for range tt.n {
				wg.Go(func() {
					_, err := e.m.Create(t.Context(), CreateRequest{VCPUs: tt.vcpus, MemoryMiB: tt.memoryMiB})
					mu.Lock()
					defer mu.Unlock()
					switch {
					case err == nil:
						ok++
					case errors.Is(err, errdefs.ErrResourceExhausted):
						full++
					default:
						otherErrs = append(otherErrs, err)
					}
				})
			}
			wg.Wait()
			if len(otherErrs) > 0 {
				t.Fatalf("unexpected errors: %v", otherErrs)
			}
			if ok != tt.wantOK || full != tt.n-tt.wantOK {
				t.Errorf("%d accepted and %d refused, want %d and %d", ok, full, tt.wantOK, tt.n-tt.wantOK)
			}
			if n := len(e.sandboxDirs(t)); n != tt.wantOK {
				t.Errorf("%d sandbox dirs, want %d", n, tt.wantOK)
			}
		})
	}
}

// TestHostBudgetRestore checks that a restore takes its snapshot's share
// of the budget like a create.
func TestHostBudgetRestore(t *testing.T) {
	rt := &fakeRuntime{}
	e := newSnapEnv(t, rt, func(c *Config) { c.MaxTotalVCPUs = 3 })
	src := e.ready(t, CreateRequest{VCPUs: 2})
	meta, err := e.m.Checkpoint(t.Context(), CheckpointRequest{SandboxID: src.ID, Name: "budget"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Restore(t.Context(), RestoreRequest{SnapshotID: meta.ID}); !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Fatalf("restore past the budget: %v, want ResourceExhausted", err)
	}
	if n := len(e.sandboxDirs(t)); n != 1 {
		t.Errorf("%d sandbox dirs after the refused restore, want 1", n)
	}
	if _, err := e.m.Stop(t.Context(), src.ID, 0); err != nil {
		t.Fatal(err)
	}
	r, err := e.m.Restore(t.Context(), RestoreRequest{SnapshotID: meta.ID})
	if err != nil {
		t.Fatalf("restore once the source stopped: %v", err)
	}
	e.waitState(t, r.ID, StateReady, 5*time.Second)
}
