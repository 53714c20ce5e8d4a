package events

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func recv(t *testing.T, s *Subscription) Event {
	t.Helper()
	select {
	case ev, ok := <-s.C():
		if !ok {
			t.Fatalf("subscription ended: %v", s.Err())
		}
		return ev
	case <-time.After(2 * time.Second):
		t.Fatal("no event within 2s")
	}
	return Event{}
}

func TestFilterMatch(t *testing.T) {
	ev := Event{SandboxID: "a", Action: "ready"}
	tests := []struct {
		name string
		f    Filter
		want bool
	}{
		{"zero matches all", Filter{}, true},
		{"same id", Filter{SandboxID: "a"}, true},
		{"other id", Filter{SandboxID: "b"}, false},
		{"action listed", Filter{Actions: []string{"created", "ready"}}, true},
		{"action not listed", Filter{Actions: []string{"created"}}, false},
		{"both", Filter{SandboxID: "a", Actions: []string{"ready"}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.f.Match(ev); got != tt.want {
				t.Fatalf("Match = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPublishOrderAndFilter(t *testing.T) {
	x := NewExchange(Options{})
	defer x.Close()
	all, err := x.Subscribe(t.Context(), Filter{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	onlyB, err := x.Subscribe(t.Context(), Filter{SandboxID: "b"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	x.Publish(Event{SandboxID: "a", Action: "created", Attributes: map[string]string{"k": "v"}})
	x.Publish(Event{SandboxID: "b", Action: "created"})
	x.Publish(Event{SandboxID: "a", Action: "ready"})
	for i, want := range []string{"a", "b", "a"} {
		ev := recv(t, all)
		if ev.Seq != uint64(i+1) || ev.SandboxID != want || ev.Time.IsZero() {
			t.Fatalf("event %d = %+v", i, ev)
		}
	}
	if ev := recv(t, onlyB); ev.SandboxID != "b" || ev.Seq != 2 {
		t.Fatalf("filtered event = %+v", ev)
	}
	if x.LastSeq() != 3 {
		t.Fatalf("LastSeq = %d", x.LastSeq())
	}
}

func TestSlowConsumerIsDroppedAndPublisherNeverBlocks(t *testing.T) {
	x := NewExchange(Options{Buffer: 2})
	defer x.Close()
	slow, err := x.Subscribe(t.Context(), Filter{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 100 {
			x.Publish(Event{SandboxID: fmt.Sprint(i), Action: "created"})
		}
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Publish blocked on a slow subscriber")
	}
	n := 0
	for range slow.C() {
		n++
	}
	if n != 2 {
		t.Fatalf("slow subscriber got %d buffered events, want 2", n)
	}
	if !errors.Is(slow.Err(), ErrSlowConsumer) {
		t.Fatalf("Err = %v, want ErrSlowConsumer", slow.Err())
	}
}

func TestSinceReplaysHistory(t *testing.T) {
	x := NewExchange(Options{History: 3})
	defer x.Close()
	for i := range 5 {
		x.Publish(Event{SandboxID: "s", Action: fmt.Sprint(i)})
	}
	// Retained: seq 3, 4, 5.
	s, err := x.Subscribe(t.Context(), Filter{}, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []uint64{3, 4, 5} {
		if ev := recv(t, s); ev.Seq != want {
			t.Fatalf("replayed seq %d, want %d", ev.Seq, want)
		}
	}
	x.Publish(Event{SandboxID: "s", Action: "live"})
	if ev := recv(t, s); ev.Seq != 6 || ev.Action != "live" {
		t.Fatalf("live event = %+v", ev)
	}
	if _, err := x.Subscribe(t.Context(), Filter{}, 1); !errors.Is(err, ErrHistoryGone) {
		t.Fatalf("since=1 with history from 3: err = %v, want ErrHistoryGone", err)
	}
	s.Close()
}

func TestSubscriptionEnds(t *testing.T) {
	t.Run("context", func(t *testing.T) {
		x := NewExchange(Options{})
		defer x.Close()
		ctx, cancel := context.WithCancel(t.Context())
		s, err := x.Subscribe(ctx, Filter{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		cancel()
		<-s.Done()
		if _, ok := <-s.C(); ok {
			t.Fatal("channel not closed")
		}
		if !errors.Is(s.Err(), context.Canceled) {
			t.Fatalf("Err = %v", s.Err())
		}
	})
	t.Run("exchange closed", func(t *testing.T) {
		x := NewExchange(Options{})
		s, err := x.Subscribe(t.Context(), Filter{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		x.Close()
		<-s.Done()
		if !errors.Is(s.Err(), ErrClosed) {
			t.Fatalf("Err = %v", s.Err())
		}
		if _, err := x.Subscribe(t.Context(), Filter{}, 0); !errors.Is(err, ErrClosed) {
			t.Fatalf("Subscribe after Close: %v", err)
		}
		x.Publish(Event{SandboxID: "late"}) // must not panic
	})
	t.Run("already canceled context", func(t *testing.T) {
		x := NewExchange(Options{})
		defer x.Close()
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		s, err := x.Subscribe(ctx, Filter{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		<-s.Done()
	})
}

func TestConcurrentPublishSubscribe(t *testing.T) {
	x := NewExchange(Options{Buffer: 1 << 12})
	defer x.Close()
	var wg sync.WaitGroup
	subs := make([]*Subscription, 4)
	for i := range subs {
		s, err := x.Subscribe(t.Context(), Filter{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		subs[i] = s
	}
	for p := range 4 {
		wg.Go(func() {
			for i := range 200 {
				x.Publish(Event{SandboxID: fmt.Sprint(p), Action: fmt.Sprint(i)})
			}
		})
	}
	wg.Wait()
	for _, s := range subs {
		var last uint64
		for range 800 {
			ev := recv(t, s)
			if ev.Seq <= last {
				t.Fatalf("seq %d after %d: not increasing", ev.Seq, last)
			}
			last = ev.Seq
		}
		s.Close()
	}
}

// Persist sees every event in order; Subscribe falls back to Backfill for
// events older than the in-memory history, and reports a gap there too.
func TestPersistAndBackfill(t *testing.T) {
	var stored []Event
	x := NewExchange(Options{
		History: 2,
		Persist: func(ev Event) error { stored = append(stored, ev); return nil },
		Backfill: func(since uint64) ([]Event, bool, error) {
			var out []Event
			for _, ev := range stored {
				if ev.Seq > since {
					out = append(out, ev)
				}
			}
			return out, since >= 10, nil // the store keeps seq > 10 only
		},
	})
	defer x.Close()
	x.SetSeq(10)
	for i := range 5 {
		x.Publish(Event{SandboxID: fmt.Sprint(i), Action: "created"})
	}
	if len(stored) != 5 || stored[0].Seq != 11 || stored[4].Seq != 15 {
		t.Fatalf("persisted %v", stored)
	}
	tests := []struct {
		since   uint64
		want    []uint64
		wantErr error
	}{
		{since: 10, want: []uint64{11, 12, 13, 14, 15}},
		{since: 12, want: []uint64{13, 14, 15}},
		{since: 14, want: []uint64{15}},
		{since: 9, wantErr: ErrHistoryGone},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.since), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			s, err := x.Subscribe(ctx, Filter{}, tt.since)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("subscribe: %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			defer s.Close()
			for _, want := range tt.want {
				if ev := recv(t, s); ev.Seq != want {
					t.Fatalf("got seq %d, want %d", ev.Seq, want)
				}
			}
		})
	}
}

// history is a durable event history for tests: Persist appends to it and
// Backfill reads it, from any goroutine.
type history struct {
	mu  sync.Mutex
	evs []Event
	// from is the oldest sequence it still holds (0: all).
	from uint64
}

func (h *history) persist(ev Event) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.evs = append(h.evs, ev)
	return nil
}

// since is what the store's EventsSince would return.
func (h *history) since(since uint64) ([]Event, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []Event
	for _, ev := range h.evs {
		if ev.Seq > since && ev.Seq >= h.from {
			out = append(out, ev)
		}
	}
	return out, since+1 >= h.from
}

// testEvent is the i-th event the backfill tests publish.
func testEvent(i int) Event {
	return Event{SandboxID: []string{"a", "b", "c"}[i%3], Action: []string{"created", "ready", "stopped", "removed"}[i%4]}
}

// wait fails the test unless ch is closed (or sends) within 5s.
func wait[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: not within 5s", what)
	}
	var zero T
	return zero
}

// Subscribe reads the durable history without the exchange's lock:
// Publish completes while a Backfill is parked, and the subscription then
// gets every matching event after since exactly once, in order (backfilled,
// published during the backfill, live), however the ring moved meanwhile.
func TestBackfillOutsideTheLock(t *testing.T) {
	const (
		ringSize = 8
		before   = 12 // published before Subscribe: the ring holds 5..12
		live     = 3  // published after Subscribe returned
	)
	tests := []struct {
		name   string
		filter Filter
		since  uint64
		// during is how many events are published while Backfill is
		// parked (or, without a backfill, after Subscribe returned).
		during int
		// late: Backfill reads the store after it is released (seeing
		// the events published meanwhile), not before it parks.
		late bool
		// storeFrom is the oldest event the store still holds.
		storeFrom uint64
		// backfills is how many times Backfill must be called.
		backfills int
		wantErr   error
	}{
		{name: "live only", since: 0, during: 3},
		{name: "inside the ring", since: 8, during: 3},
		{name: "at the ring's edge", since: 4, during: 3},
		{name: "at the last event", since: before, during: 2},
		{name: "beyond the last event", since: 100, during: 2},
		{name: "one before the ring's edge", since: 3, during: 3, backfills: 1},
		{name: "from the first event", since: 1, during: 0, backfills: 1},
		{name: "ring spliced after an early read", since: 2, during: 8, backfills: 1},
		{name: "ring spliced after a late read", since: 2, during: 20, late: true, backfills: 1},
		{name: "ring moved past an early read: second backfill", since: 2, during: 9, backfills: 2},
		{name: "ring moved far past an early read", since: 1, during: 30, backfills: 2},
		{name: "filter by sandbox", filter: Filter{SandboxID: "a"}, since: 2, during: 5, backfills: 1},
		{name: "filter by action, late read", filter: Filter{Actions: []string{"ready", "removed"}}, since: 2, during: 5,
			late: true, backfills: 1},
		{name: "both filters, second backfill", filter: Filter{SandboxID: "b", Actions: []string{"created", "ready"}},
			since: 2, during: 12, backfills: 2},
		{name: "filter matching nothing", filter: Filter{SandboxID: "zzz"}, since: 2, during: 3, backfills: 1},
		{name: "filter by sandbox inside the ring", filter: Filter{SandboxID: "c"}, since: 6, during: 3},
		{name: "store trimmed too", since: 2, during: 3, storeFrom: 5, backfills: 1, wantErr: ErrHistoryGone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &history{from: tt.storeFrom}
			entered, release := make(chan struct{}), make(chan struct{})
			var (
				mu        sync.Mutex
				backfills int
			)
			x := NewExchange(Options{History: ringSize, Buffer: 64, Persist: h.persist,
				Backfill: func(since uint64) ([]Event, bool, error) {
					mu.Lock()
					backfills++
					first := backfills == 1
					mu.Unlock()
					evs, ok := h.since(since)
					if first {
						close(entered)
						<-release
						if tt.late {
							evs, ok = h.since(since)
						}
					}
					return evs, ok, nil
				}})
			defer x.Close()
			// On failure too, so that the exchange can close.
			releaseBackfill := sync.OnceFunc(func() { close(release) })
			defer releaseBackfill()
			n := 0
			publish := func(k int) {
				for range k {
					n++
					x.Publish(testEvent(n))
				}
			}
			publish(before)

			type result struct {
				s   *Subscription
				err error
			}
			res := make(chan result, 1)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			go func() {
				s, err := x.Subscribe(ctx, tt.filter, tt.since)
				res <- result{s, err}
			}()
			var r result
			if tt.backfills > 0 {
				wait(t, entered, "Backfill called")
				// Backfill is parked: Publish must not wait for it.
				published := make(chan struct{})
				go func() {
					defer close(published)
					publish(tt.during)
				}()
				wait(t, published, "Publish while Backfill is parked")
				releaseBackfill()
				r = wait(t, res, "Subscribe")
			} else {
				r = wait(t, res, "Subscribe")
				publish(tt.during)
			}
			mu.Lock()
			got := backfills
			mu.Unlock()
			if got != tt.backfills {
				t.Errorf("Backfill called %d times, want %d", got, tt.backfills)
			}
			if !errors.Is(r.err, tt.wantErr) {
				t.Fatalf("Subscribe = %v, want %v", r.err, tt.wantErr)
			}
			if r.err != nil {
				return
			}
			defer r.s.Close()
			publish(live)

			var want []uint64
			for i := 1; i <= n; i++ {
				if uint64(i) > tt.since && tt.filter.Match(testEvent(i)) {
					want = append(want, uint64(i))
				}
			}
			if tt.since == 0 || tt.since >= before {
				// Nothing to replay (since beyond the last event
				// included): what was published after Subscribe returned.
				want = nil
				for i := before + 1; i <= n; i++ {
					if tt.filter.Match(testEvent(i)) {
						want = append(want, uint64(i))
					}
				}
			}
			// Every event was published before this point, and Publish
			// delivers into the buffer: all of them are there already.
			var seqs []uint64
		drain:
			for {
				select {
				case ev := <-r.s.C():
					seqs = append(seqs, ev.Seq)
					if w := testEvent(int(ev.Seq)); ev.SandboxID != w.SandboxID || ev.Action != w.Action {
						t.Errorf("event %d = %s %s, want %s %s", ev.Seq, ev.SandboxID, ev.Action, w.SandboxID, w.Action)
					}
				default:
					break drain
				}
			}
			if !slices.Equal(seqs, want) {
				t.Fatalf("delivered %v\nwant      %v", seqs, want)
			}
		})
	}
}

// A Backfill that publishes (it runs without the exchange's lock) so much
// that the ring always outruns it makes Subscribe give up after
// maxBackfillRounds calls; one that publishes a little is caught up from
// the ring.
func TestBackfillThatPublishes(t *testing.T) {
	tests := []struct {
		name      string
		perCall   int
		backfills int
		wantErr   error
	}{
		{"a few events per call", 3, 1, nil},
		{"more than the ring per call", 10, maxBackfillRounds, ErrHistoryGone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &history{}
			var x *Exchange
			backfills := 0
			x = NewExchange(Options{History: 8, Buffer: 256, Persist: h.persist,
				Backfill: func(since uint64) ([]Event, bool, error) {
					backfills++
					evs, ok := h.since(since)
					for range tt.perCall {
						x.Publish(Event{SandboxID: "p", Action: "created"})
					}
					return evs, ok, nil
				}})
			defer x.Close()
			for range 12 {
				x.Publish(Event{SandboxID: "p", Action: "created"})
			}
			s, err := x.Subscribe(t.Context(), Filter{}, 2)
			if backfills != tt.backfills {
				t.Errorf("Backfill called %d times, want %d", backfills, tt.backfills)
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Subscribe = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			defer s.Close()
			for want := uint64(3); want <= x.LastSeq(); want++ {
				if ev := recv(t, s); ev.Seq != want {
					t.Fatalf("got seq %d, want %d", ev.Seq, want)
				}
			}
		})
	}
}

// A Backfill error fails Subscribe and registers nothing.
func TestBackfillError(t *testing.T) {
	boom := errors.New("store unreadable")
	x := NewExchange(Options{History: 2, Backfill: func(uint64) ([]Event, bool, error) { return nil, false, boom }})
	defer x.Close()
	for range 5 {
		x.Publish(Event{SandboxID: "s"})
	}
	if _, err := x.Subscribe(t.Context(), Filter{}, 1); !errors.Is(err, boom) {
		t.Fatalf("Subscribe = %v, want %v", err, boom)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if len(x.subs) != 0 {
		t.Fatalf("%d subscriptions registered after a failed Subscribe", len(x.subs))
	}
}
