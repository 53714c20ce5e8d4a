// Package ids makes the daemon's object ids (sandboxes, snapshots): 12
// lower-case Crockford base32 characters, unique and sortable by creation
// time, valid as Firecracker and jailer instance ids and short enough for
// interface names. It imports the standard library only.
package ids

import (
	"math/rand/v2"
	"strings"
	"sync"
	"time"
)

// Ids are 12 characters of lower-case Crockford base32 (digits and
// letters without i, l, o, u) encoding 60 bits, most significant first:
// 45 bits of unix milliseconds and a 15-bit sequence. The alphabet is in
// ASCII order, so ids sort like the numbers they encode: by creation time,
// then by sequence. They satisfy Firecracker's and the jailer's --id rules.
const (
	// Length is the length of an id.
	Length = 12
	// idAlphabet is Crockford's base32 alphabet in lower case.
	idAlphabet = "0123456789abcdefghjkmnpqrstvwxyz"
	timeBits   = 45
	seqBits    = 15
	maxSeq     = 1<<seqBits - 1
	maxMillis  = 1<<timeBits - 1
)

// Generator makes unique, strictly increasing ids. Within one
// millisecond the sequence counts up from a random start below 2^14; when
// it overflows the generator borrows the next millisecond, so ids stay
// strictly increasing even if the clock stands still or goes back.
type Generator struct {
	now func() time.Time
	rnd func() uint64 // returns a value in [0, 2^14)

	// mu guards the fields that follow.
	mu     sync.Mutex
	lastMs uint64
	seq    uint64
}

// NewGenerator returns a generator reading the clock now (time.Now when
// nil).
func NewGenerator(now func() time.Time) *Generator {
	if now == nil {
		now = time.Now
	}
	return &Generator{now: now, rnd: func() uint64 { return rand.Uint64N(1 << (seqBits - 1)) }}
}

// New returns the next id.
func (g *Generator) New() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	ms := uint64(max(g.now().UnixMilli(), 0)) & maxMillis
	switch {
	case ms > g.lastMs:
		g.lastMs, g.seq = ms, g.rnd()
	case g.seq < maxSeq:
		g.seq++
	default:
		g.lastMs, g.seq = g.lastMs+1, g.rnd()
	}
	return encodeID(g.lastMs<<seqBits | g.seq)
}

// encodeID formats the 60-bit value v as an id.
func encodeID(v uint64) string {
	var b [Length]byte
	for i := Length - 1; i >= 0; i-- {
		b[i] = idAlphabet[v&31]
		v >>= 5
	}
	return string(b[:])
}

// Valid reports whether id has the form of an id.
func Valid(id string) bool {
	if len(id) != Length {
		return false
	}
	for i := range len(id) {
		if idIndex(id[i]) < 0 {
			return false
		}
	}
	return true
}

// idIndex returns c's value in the alphabet, or -1.
func idIndex(c byte) int { return strings.IndexByte(idAlphabet, c) }
