package store

import (
	"testing"
)

// EventsPage returns at most limit events after seq, in order, and reports
// trimming as EventsSince does.
func TestEventsPage(t *testing.T) {
	ctx := t.Context()
	s := openStore(t, "", Options{EventHistory: 5})
	for range 12 {
		if _, err := s.AppendEvent(ctx, EventRecord{SandboxID: "sb", Action: "created", State: "starting"}); err != nil {
			t.Fatal(err)
		}
	}
	// 8..12 are retained.
	tests := []struct {
		seq   uint64
		limit int
		want  []uint64
		ok    bool
	}{
		{7, 2, []uint64{8, 9}, true},
		{9, 2, []uint64{10, 11}, true},
		{11, 2, []uint64{12}, true},
		{7, 0, []uint64{8, 9, 10, 11, 12}, true},
		{12, 2, nil, true},
		{3, 2, []uint64{8, 9}, false},
	}
	for _, tt := range tests {
		evs, ok, err := s.EventsPage(ctx, tt.seq, tt.limit)
		if err != nil {
			t.Fatalf("EventsPage(%d, %d): %v", tt.seq, tt.limit, err)
		}
		var got []uint64
		for _, ev := range evs {
			got = append(got, ev.Seq)
		}
		if ok != tt.ok || len(got) != len(tt.want) {
			t.Errorf("EventsPage(%d, %d) = %v, %v; want %v, %v", tt.seq, tt.limit, got, ok, tt.want, tt.ok)
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("EventsPage(%d, %d) = %v; want %v", tt.seq, tt.limit, got, tt.want)
				break
			}
		}
	}
}
