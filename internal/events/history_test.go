package events

import (
	"errors"
	"slices"
	"testing"
)

// History pages through the ring and the store: every matching event
// after since comes once, in order, no page holds more than the limit,
// and numbers never written (missing from the store) are skipped.
func TestHistoryPages(t *testing.T) {
	const published, ring, limit = 50, 10, 7
	// stored is the durable history: every event but 20, which was never
	// written.
	parity := func(seq uint64) string {
		if seq%2 == 1 {
			return "odd"
		}
		return "even"
	}
	var stored []Event
	for seq := uint64(1); seq <= published; seq++ {
		if seq != 20 {
			stored = append(stored, Event{Seq: seq, SandboxID: parity(seq), Action: parity(seq)})
		}
	}
	after := func(since uint64) []Event {
		i, _ := slices.BinarySearchFunc(stored, since+1, func(e Event, s uint64) int { return int(e.Seq) - int(s) })
		return slices.Clone(stored[i:])
	}
	var pageCalls, fullCalls int
	pageFn := func(since uint64, n int) ([]Event, bool, error) {
		pageCalls++
		evs := after(since)
		return evs[:min(n, len(evs))], true, nil
	}
	fullFn := func(since uint64) ([]Event, bool, error) { fullCalls++; return after(since), true, nil }
	tests := []struct {
		name     string
		opts     Options
		since    uint64
		filter   Filter
		wantSeqs func(seq uint64) bool
		wantErr  error
	}{
		{"ring only", Options{History: 100}, 10, Filter{}, func(s uint64) bool { return s > 10 }, nil},
		{"ring only filtered", Options{History: 100}, 10, Filter{SandboxID: "odd"}, func(s uint64) bool { return s > 10 && s%2 == 1 }, nil},
		{"store pages then ring", Options{History: ring, BackfillPage: pageFn}, 5, Filter{}, func(s uint64) bool { return s > 5 && s != 20 }, nil},
		{"store without pages", Options{History: ring, Backfill: fullFn}, 5, Filter{Actions: []string{"even"}}, func(s uint64) bool { return s > 5 && s != 20 && s%2 == 0 }, nil},
		{"caught up", Options{History: ring}, published, Filter{}, func(uint64) bool { return false }, nil},
		{"beyond the ring, no store", Options{History: ring}, 5, Filter{}, nil, ErrHistoryGone},
		{"trimmed in the store", Options{History: ring, BackfillPage: func(uint64, int) ([]Event, bool, error) { return nil, false, nil }}, 5, Filter{}, nil, ErrHistoryGone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pageCalls, fullCalls = 0, 0
			x := NewExchange(tt.opts)
			for seq := uint64(1); seq <= published; seq++ {
				id, action := parity(seq), parity(seq)
				if seq == 20 {
					id = "never-written"
				}
				x.Publish(Event{SandboxID: id, Action: action})
			}
			var got []uint64
			since := tt.since
			for round := 0; ; round++ {
				if round > published {
					t.Fatalf("no end after %d pages", round)
				}
				evs, next, err := x.History(tt.filter, since, limit)
				if tt.wantErr != nil {
					if !errors.Is(err, tt.wantErr) {
						t.Fatalf("History(%d) = %v, want %v", since, err, tt.wantErr)
					}
					return
				}
				if err != nil {
					t.Fatalf("History(%d): %v", since, err)
				}
				if len(evs) > limit {
					t.Errorf("page after %d holds %d events, limit %d", since, len(evs), limit)
				}
				if next < since {
					t.Fatalf("History(%d) went back to %d", since, next)
				}
				for _, ev := range evs {
					if ev.Seq <= since || ev.Seq > next {
						t.Errorf("page (%d, %d] holds seq %d", since, next, ev.Seq)
					}
					got = append(got, ev.Seq)
				}
				if next == since {
					break
				}
				since = next
			}
			var want []uint64
			for seq := uint64(1); seq <= published; seq++ {
				if tt.wantSeqs(seq) {
					want = append(want, seq)
				}
			}
			if !slices.Equal(got, want) {
				t.Errorf("paged history %v\nwant %v", got, want)
			}
			if tt.opts.BackfillPage != nil && pageCalls == 0 || tt.opts.Backfill != nil && fullCalls == 0 {
				t.Errorf("the store was not read (pages %d, full reads %d)", pageCalls, fullCalls)
			}
		})
	}
}

// History after Close fails with ErrClosed.
func TestHistoryClosed(t *testing.T) {
	x := NewExchange(Options{})
	x.Publish(Event{})
	x.Close()
	if _, _, err := x.History(Filter{}, 0, 10); !errors.Is(err, ErrClosed) {
		t.Errorf("History after Close: %v, want ErrClosed", err)
	}
}
