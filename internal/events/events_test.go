package events

import (
	"context"
	"errors"
	"fmt"
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
