package ids

import (
	"strings"
	"testing"
)

// FuzzValid checks Valid against the definition (Length characters of the
// alphabet) and that every encoded value is a valid id whose order is the
// value's order.
func FuzzValid(f *testing.F) {
	for _, s := range []string{"01h2k3m4n5p6", "0000000000zz", "", "01h2k3m4n5pi", "01H2K3M4N5P6", "01h2k3m4n5p", "01h2k3m4n5p6x",
		"../../etc/pa", "01h2k3m4n5p\x00", "01h2k3m4n5pé"} {
		f.Add(s, uint64(0), uint64(1))
	}
	f.Add("zzzzzzzzzzzz", uint64(1)<<59, uint64(1)<<60-1)
	f.Fuzz(func(t *testing.T, id string, a, b uint64) {
		want := len(id) == Length
		for i := range len(id) {
			if !strings.ContainsRune(idAlphabet, rune(id[i])) || id[i] >= 0x80 {
				want = false
			}
		}
		if got := Valid(id); got != want {
			t.Fatalf("Valid(%q) = %v, want %v", id, got, want)
		}
		const mask = 1<<60 - 1
		a, b = a&mask, b&mask
		ea, eb := encodeID(a), encodeID(b)
		if !Valid(ea) || !Valid(eb) {
			t.Fatalf("encodeID gave invalid ids %q, %q", ea, eb)
		}
		if (a < b) != (ea < eb) || (a == b) != (ea == eb) {
			t.Fatalf("order: %d vs %d encode to %q vs %q", a, b, ea, eb)
		}
	})
}
