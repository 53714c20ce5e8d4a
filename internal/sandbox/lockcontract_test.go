package sandbox

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/events"
	"github.com/firecracker-vmm/firecracker-vmm/internal/store"
)

// These tests prove the lock contract of the package doc ("Concurrency")
// by parking what must not be waited for — a store commit, an event
// subscriber's history backfill — on a channel, and showing that what must
// go on still completes. The bound below only turns a deadlock into a
// failure; nothing is timed.

// waitBound is how long a wait for something that must happen may take
// before the test calls it blocked.
const waitBound = 10 * time.Second

// await returns the next value of ch, failing the test when none comes
// within waitBound.
func await[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitBound):
		t.Fatalf("%s: still blocked after %v", what, waitBound)
		panic("unreachable")
	}
}

// async runs fn in a goroutine; the channel gets its result.
func async[T any](fn func() (T, error)) <-chan result[T] {
	ch := make(chan result[T], 1)
	go func() {
		v, err := fn()
		ch <- result[T]{v, err}
	}()
	return ch
}

type result[T any] struct {
	v   T
	err error
}

func (r result[T]) unpack() (T, error) { return r.v, r.err }

// mustFinish runs fn and returns its value, failing the test when fn fails or
// does not return within waitBound.
func mustFinish[T any](t *testing.T, what string, fn func() (T, error)) T {
	t.Helper()
	r := await(t, async(fn), what)
	if r.err != nil {
		t.Fatalf("%s: %v", what, r.err)
	}
	return r.v
}

// storeCall is a write a gatedStore received (for DeleteSandbox, rec holds
// only the id).
type storeCall struct {
	method string
	rec    store.SandboxRecord
}

// gatedStore is a real store whose writes park, once a gate is armed,
// when they match it, until the gate is released.
type gatedStore struct {
	*store.Store

	mu      sync.Mutex
	match   func(storeCall) bool // nil: nothing parks
	entered chan storeCall       // gets the first call that parked
	release chan struct{}        // closed: parked and later calls pass
}

var _ Store = (*gatedStore)(nil)

// arm makes the writes that match park. The channel gets the first one
// once it has parked; release (also called at the end of the test) lets
// every parked and later write through.
func (s *gatedStore) arm(t *testing.T, match func(storeCall) bool) (entered <-chan storeCall, release func()) {
	s.mu.Lock()
	s.match, s.entered, s.release = match, make(chan storeCall, 1), make(chan struct{})
	ch, rel := s.entered, s.release
	s.mu.Unlock()
	release = sync.OnceFunc(func() { close(rel) })
	t.Cleanup(release)
	return ch, release
}

// gate parks c while it matches an armed gate that is not released. It
// ignores the write's deadline: a write parks until released (at the end
// of the test at the latest), so that whatever waits for it shows as
// blocked instead of going on once the deadline fails the write.
func (s *gatedStore) gate(c storeCall) {
	s.mu.Lock()
	match, entered, release := s.match, s.entered, s.release
	s.mu.Unlock()
	if match == nil || !match(c) {
		return
	}
	select {
	case entered <- c:
	default:
	}
	<-release
}

func (s *gatedStore) PutSandbox(ctx context.Context, rec store.SandboxRecord) error {
	s.gate(storeCall{"PutSandbox", rec})
	return s.Store.PutSandbox(ctx, rec)
}

func (s *gatedStore) CreateSandbox(ctx context.Context, rec store.SandboxRecord) error {
	s.gate(storeCall{"CreateSandbox", rec})
	return s.Store.CreateSandbox(ctx, rec)
}

func (s *gatedStore) DeleteSandbox(ctx context.Context, id string) error {
	s.gate(storeCall{"DeleteSandbox", store.SandboxRecord{ID: id}})
	return s.Store.DeleteSandbox(ctx, id)
}

// createReady creates a sandbox and waits for its ready event.
func (e *testEnv) createReady(t *testing.T, rec *recorder) Sandbox {
	t.Helper()
	s := mustFinish(t, "create", func() (Sandbox, error) { return e.m.Create(t.Context(), CreateRequest{}) })
	rec.wait(t, s.ID, ActionReady, waitBound)
	return s
}

// While a sandbox's record write is parked in the store, the operation
// that made the change waits for it, and everything else goes on: Get and
// List answer for that sandbox (showing the change already) and for
// others, and another sandbox stops (its record writer is its own). Once
// the write is released the operation returns and the store holds the
// final record.
func TestStoreCommitLeavesReadersFree(t *testing.T) {
	tests := []struct {
		name string
		// stopped: the target is stopped before the gate is armed (else
		// it is ready).
		stopped bool
		// park says which write parks; target is the target's id (for
		// a create, the sandbox created by op is the target).
		park func(c storeCall, target string) bool
		op   func(ctx context.Context, m *Manager, target string) (Sandbox, error)
		// during is what Get shows of the target while the write is
		// parked (any of these; none: not found); stored is what the
		// store holds at the end (any of these; none: no record).
		during, stored []State
	}{{
		name: "stop: the stopping record",
		park: func(c storeCall, target string) bool {
			return c.method == "PutSandbox" && c.rec.ID == target && c.rec.State == string(StateStopping)
		},
		op:     func(ctx context.Context, m *Manager, id string) (Sandbox, error) { return m.Stop(ctx, id, 0) },
		during: []State{StateStopping}, stored: []State{StateStopped},
	}, {
		name: "stop: the stopped record",
		park: func(c storeCall, target string) bool {
			return c.method == "PutSandbox" && c.rec.ID == target && c.rec.State == string(StateStopped)
		},
		op:     func(ctx context.Context, m *Manager, id string) (Sandbox, error) { return m.Stop(ctx, id, 0) },
		during: []State{StateStopped}, stored: []State{StateStopped},
	}, {
		name: "forced remove of a ready sandbox: the stopping record",
		park: func(c storeCall, target string) bool {
			return c.method == "PutSandbox" && c.rec.ID == target && c.rec.State == string(StateStopping)
		},
		op: func(ctx context.Context, m *Manager, id string) (Sandbox, error) {
			return Sandbox{}, m.Remove(ctx, id, true)
		},
		during: []State{StateStopping},
	}, {
		name:    "remove: the removal mark",
		stopped: true,
		park: func(c storeCall, target string) bool {
			return c.method == "PutSandbox" && c.rec.ID == target && c.rec.Removing
		},
		op: func(ctx context.Context, m *Manager, id string) (Sandbox, error) {
			return Sandbox{}, m.Remove(ctx, id, false)
		},
		during: []State{StateStopped},
	}, {
		name:    "remove: the deletion",
		stopped: true,
		park:    func(c storeCall, target string) bool { return c.method == "DeleteSandbox" && c.rec.ID == target },
		op: func(ctx context.Context, m *Manager, id string) (Sandbox, error) {
			return Sandbox{}, m.Remove(ctx, id, false)
		},
	}, {
		// The boot runs while the new record is written, so the sandbox
		// may be ready already; its ready record is written after the
		// new one.
		name: "create: the new record",
		park: func(c storeCall, _ string) bool { return c.method == "CreateSandbox" },
		op: func(ctx context.Context, m *Manager, _ string) (Sandbox, error) {
			return m.Create(ctx, CreateRequest{})
		},
		during: []State{StateStarting, StateReady}, stored: []State{StateStarting, StateReady},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := &gatedStore{Store: openStore(t, t.TempDir())}
			e := newTestEnv(t, t.TempDir(), &fakeRuntime{}, func(c *Config) { c.Store = st })
			ctx := t.Context()
			target, other := e.createReady(t, e.rec).ID, e.createReady(t, e.rec).ID
			if tt.stopped {
				mustFinish(t, "stop before", func() (Sandbox, error) { return e.m.Stop(ctx, target, 0) })
			}
			entered, release := st.arm(t, func(c storeCall) bool { return c.rec.ID != other && tt.park(c, target) })

			op := async(func() (Sandbox, error) { return tt.op(ctx, e.m, target) })
			parked := await(t, entered, "the write to park")
			id := parked.rec.ID // target, or the sandbox being created

			// The write is parked: the operation waits for it...
			select {
			case r := <-op:
				t.Fatalf("the operation returned (%v) before its record was written", r.err)
			default:
			}
			// ...and Get and List do not.
			get := async(func() (Sandbox, error) { return e.m.Get(ctx, id) })
			got, err := await(t, get, "Get of the parked sandbox").unpack()
			switch {
			case len(tt.during) == 0 && !errors.Is(err, errdefs.ErrNotFound):
				t.Errorf("Get of the parked sandbox = %s, %v; want not found", got.State, err)
			case len(tt.during) > 0 && (err != nil || !slices.Contains(tt.during, got.State)):
				t.Errorf("Get of the parked sandbox = %s, %v; want one of %v", got.State, err, tt.during)
			}
			list := mustFinish(t, "List", func() ([]Sandbox, error) { return e.m.List(ctx, ListFilter{}) })
			want := map[string][]State{other: {StateReady}}
			if id != target { // a create: the target is untouched
				want[target] = []State{StateReady}
			}
			if len(tt.during) > 0 {
				want[id] = tt.during
			}
			gotList := map[string]State{}
			for _, s := range list {
				gotList[s.ID] = s.State
				if !slices.Contains(want[s.ID], s.State) {
					t.Errorf("List has %s %s, want one of %v", s.ID, s.State, want[s.ID])
				}
			}
			if len(list) != len(want) {
				t.Errorf("List = %v, want %v", gotList, want)
			}
			if s := mustFinish(t, "Get of another sandbox", func() (Sandbox, error) { return e.m.Get(ctx, other) }); s.State != StateReady {
				t.Errorf("Get of another sandbox = %s, want ready", s.State)
			}
			mustFinish(t, "Stop of another sandbox", func() (Sandbox, error) { return e.m.Stop(ctx, other, 0) })
			if _, state := storedState(t, st.Store, other); state != string(StateStopped) {
				t.Errorf("another sandbox stored as %q after its stop, want stopped", state)
			}

			release()
			r := await(t, op, "the operation once the write is released")
			if r.err != nil {
				t.Fatalf("operation: %v", r.err)
			}
			if r.v.ID != "" && r.v.ID != id {
				t.Errorf("operation returned sandbox %s, want %s", r.v.ID, id)
			}
			switch _, state := storedState(t, st.Store, id); {
			case len(tt.stored) == 0 && state != "":
				t.Errorf("stored as %q at the end, want no record", state)
			case len(tt.stored) > 0 && !slices.Contains(tt.stored, State(state)):
				t.Errorf("stored as %q at the end, want one of %v", state, tt.stored)
			}
		})
	}
}

// eventLog is the durable event history of a test exchange: Persist
// appends to it and Backfill reads it.
type eventLog struct {
	mu  sync.Mutex
	evs []events.Event
}

func (l *eventLog) persist(ev events.Event) error {
	l.mu.Lock()
	l.evs = append(l.evs, ev)
	l.mu.Unlock()
	return nil
}

// since returns the events after seq.
func (l *eventLog) since(seq uint64) []events.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	i, _ := slices.BinarySearchFunc(l.evs, seq+1, func(ev events.Event, s uint64) int { return int(ev.Seq) - int(s) })
	return slices.Clone(l.evs[i:])
}

// While an event subscriber's history backfill is parked (it runs without
// the exchange's lock, so publishing goes on), the manager goes on too:
// creates, stops and removes publish their events and complete, and Get
// and List answer. Once released, the subscriber gets every event after
// the sequence number it resumed from, contiguously, in order.
func TestEventBackfillLeavesTheManagerFree(t *testing.T) {
	log := &eventLog{}
	entered, release := make(chan struct{}), make(chan struct{})
	var first sync.Once
	x := events.NewExchange(events.Options{
		Buffer:  4096,
		History: 2, // the ring soon moves past the subscriber's since
		Persist: log.persist,
		Backfill: func(since uint64) ([]events.Event, bool, error) {
			first.Do(func() {
				close(entered)
				<-release
			})
			return log.since(since), true, nil
		},
	})
	t.Cleanup(x.Close) // after the manager's shutdown
	e := newTestEnv(t, t.TempDir(), &fakeRuntime{}, func(c *Config) {
		c.Store = openStore(t, t.TempDir())
		c.Events = x
	})
	releaseBackfill := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseBackfill) // before the manager's shutdown
	rec := newRecorder(t, x)
	ctx := t.Context()

	p, q := e.createReady(t, rec), e.createReady(t, rec)
	const since = 1 // older than the ring holds: Subscribe backfills
	if last := x.LastSeq(); last <= since+2 {
		t.Fatalf("only %d events before subscribing", last)
	}
	sub := async(func() (*events.Subscription, error) { return x.Subscribe(ctx, events.Filter{}, since) })
	await(t, entered, "the backfill to park")

	// Each step runs on the test goroutine and fails the test when a
	// call it makes does not return within waitBound.
	var c Sandbox
	steps := []struct {
		name string
		do   func(t *testing.T)
	}{
		{"create a sandbox that becomes ready", func(t *testing.T) { c = e.createReady(t, rec) }},
		{"get another sandbox", func(t *testing.T) {
			if s := mustFinish(t, "get", func() (Sandbox, error) { return e.m.Get(ctx, q.ID) }); s.State != StateReady {
				t.Errorf("get %s = %s, want ready", q.ID, s.State)
			}
		}},
		{"list", func(t *testing.T) {
			l := mustFinish(t, "list", func() ([]Sandbox, error) {
				return e.m.List(ctx, ListFilter{States: []State{StateReady}})
			})
			if len(l) != 3 {
				t.Errorf("%d ready sandboxes, want 3", len(l))
			}
		}},
		{"stop", func(t *testing.T) {
			mustFinish(t, "stop", func() (Sandbox, error) { return e.m.Stop(ctx, p.ID, 0) })
		}},
		{"remove", func(t *testing.T) {
			mustFinish(t, "remove", func() (struct{}, error) { return struct{}{}, e.m.Remove(ctx, p.ID, false) })
		}},
		{"forced remove", func(t *testing.T) {
			mustFinish(t, "forced remove", func() (struct{}, error) { return struct{}{}, e.m.Remove(ctx, c.ID, true) })
		}},
	}
	for _, step := range steps {
		t.Run(step.name, step.do)
	}
	select {
	case r := <-sub:
		t.Fatalf("Subscribe returned (%v) while its backfill was parked", r.err)
	default:
	}

	releaseBackfill()
	s := mustFinish(t, "Subscribe once the backfill is released", func() (*events.Subscription, error) {
		r := <-sub
		return r.v, r.err
	})
	defer s.Close()
	want := log.since(since)
	var got []events.Event
	for len(got) < len(want) {
		select {
		case ev, ok := <-s.C():
			if !ok {
				t.Fatalf("subscription ended (%v) after %d of %d events", s.Err(), len(got), len(want))
			}
			got = append(got, ev)
		case <-time.After(waitBound):
			t.Fatalf("subscriber: %d of %d events after %v", len(got), len(want), waitBound)
		}
	}
	for i, ev := range got {
		if w := want[i]; ev.Seq != since+1+uint64(i) || ev.Seq != w.Seq || ev.SandboxID != w.SandboxID || ev.Action != w.Action {
			t.Errorf("event %d = #%d %s %s, want #%d %s %s", i, ev.Seq, ev.SandboxID, ev.Action, w.Seq, w.SandboxID, w.Action)
		}
	}
}
