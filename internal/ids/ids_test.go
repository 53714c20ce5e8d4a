package ids

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestEncodeID(t *testing.T) {
	tests := []struct {
		v    uint64
		want string
	}{
		{0, "000000000000"},
		{1, "000000000001"},
		{31, "00000000000z"},
		{32, "000000000010"},
		{1<<60 - 1, "zzzzzzzzzzzz"},
	}
	for _, tt := range tests {
		if got := encodeID(tt.v); got != tt.want {
			t.Errorf("encodeID(%d) = %s, want %s", tt.v, got, tt.want)
		}
	}
	// The alphabet is sorted and every character maps back to its index.
	if !slices.IsSorted([]byte(idAlphabet)) || len(idAlphabet) != 32 {
		t.Fatalf("alphabet %q not sorted or not 32 characters", idAlphabet)
	}
	for i := range len(idAlphabet) {
		if idIndex(idAlphabet[i]) != i {
			t.Errorf("idIndex(%q) = %d, want %d", idAlphabet[i], idIndex(idAlphabet[i]), i)
		}
	}
}

func TestValidID(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{"01hzy3k5m7q9", true},
		{"000000000000", true},
		{"zzzzzzzzzzzz", true},
		{"", false},
		{"01hzy3k5m7q", false},   // 11
		{"01hzy3k5m7q90", false}, // 13
		{"01HZY3K5M7Q9", false},  // upper case
		{"01hzy3k5m7qi", false},  // i
		{"01hzy3k5m7ql", false},  // l
		{"01hzy3k5m7qo", false},  // o
		{"01hzy3k5m7qu", false},  // u
		{"01hzy3k5m7q-", false},
		{"../../etc/pa", false},
		{"01hzy3k5m7q\x00", false},
		{"01hzy3k5m7qé", false},
	}
	for _, tt := range tests {
		if got := Valid(tt.id); got != tt.want {
			t.Errorf("Valid(%q) = %v, want %v", tt.id, got, tt.want)
		}
	}
}

func TestIDGenerator(t *testing.T) {
	base := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		clock  []time.Time // successive clock readings (the last repeats)
		n      int
		rndVal uint64
	}{
		{"same millisecond", []time.Time{base}, 1000, 5},
		{"advancing clock", []time.Time{base, base.Add(time.Millisecond), base.Add(2 * time.Second)}, 3, 100},
		{"clock goes back", []time.Time{base, base.Add(-time.Hour), base.Add(-time.Minute)}, 10, 7},
		{"sequence overflow borrows the next ms", []time.Time{base}, 1 << 15, 1<<14 - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			i := 0
			g := NewGenerator(func() time.Time {
				c := tt.clock[min(i, len(tt.clock)-1)]
				i++
				return c
			})
			g.rnd = func() uint64 { return tt.rndVal }
			ids := make([]string, tt.n)
			for k := range ids {
				ids[k] = g.New()
				if !Valid(ids[k]) {
					t.Fatalf("invalid id %q", ids[k])
				}
			}
			for k := 1; k < len(ids); k++ {
				if strings.Compare(ids[k-1], ids[k]) >= 0 {
					t.Fatalf("ids not strictly increasing: %s then %s", ids[k-1], ids[k])
				}
			}
			// The encoded time is the clock's (or later when borrowed).
			first, _ := idTime(ids[0])
			if !first.Equal(tt.clock[0].Truncate(time.Millisecond)) {
				t.Errorf("idTime(%s) = %v, want %v", ids[0], first, tt.clock[0])
			}
			last, _ := idTime(ids[len(ids)-1])
			if last.Before(first) {
				t.Errorf("time went back: %v then %v", first, last)
			}
		})
	}
}

func TestIDGeneratorRealClock(t *testing.T) {
	g := NewGenerator(nil)
	var prev string
	for range 5000 {
		id := g.New()
		if id <= prev {
			t.Fatalf("%s after %s", id, prev)
		}
		prev = id
	}
	tm, ok := idTime(prev)
	if !ok || time.Since(tm) > time.Minute || time.Until(tm) > time.Minute {
		t.Fatalf("idTime(%s) = %v, %v", prev, tm, ok)
	}
	if _, ok := idTime("bad"); ok {
		t.Fatal("Time accepted a bad id")
	}
}

// idTime decodes the creation time encoded in a valid id (millisecond
// precision), the inverse of what Generator.New encodes.
func idTime(id string) (time.Time, bool) {
	if !Valid(id) {
		return time.Time{}, false
	}
	var v uint64
	for i := range len(id) {
		v = v<<5 | uint64(idIndex(id[i]))
	}
	return time.UnixMilli(int64(v >> seqBits)), true
}
