package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func mustPool(t *testing.T, cidr string, reserved ...string) *Pool {
	t.Helper()
	var rs []netip.Addr
	for _, r := range reserved {
		rs = append(rs, netip.MustParseAddr(r))
	}
	p, err := New(netip.MustParsePrefix(cidr), rs...)
	if err != nil {
		t.Fatalf("New(%s): %v", cidr, err)
	}
	return p
}

func TestNewValidation(t *testing.T) {
	for _, tc := range []struct {
		name     string
		prefix   netip.Prefix
		reserved []netip.Addr
		ok       bool
	}{
		{"ok /24", netip.MustParsePrefix("10.0.0.0/24"), []netip.Addr{netip.MustParseAddr("10.0.0.1")}, true},
		{"ok /30", netip.MustParsePrefix("10.0.0.0/30"), nil, true},
		{"ok /8", netip.MustParsePrefix("10.0.0.0/8"), nil, true},
		{"zero prefix", netip.Prefix{}, nil, false},
		{"ipv6", netip.MustParsePrefix("fd00::/64"), nil, false},
		{"ipv4-in-ipv6", netip.MustParsePrefix("::ffff:10.0.0.0/120"), nil, false},
		{"host bits", netip.MustParsePrefix("10.0.0.1/24"), nil, false},
		{"/31", netip.MustParsePrefix("10.0.0.0/31"), nil, false},
		{"/32", netip.MustParsePrefix("10.0.0.0/32"), nil, false},
		{"/0", netip.MustParsePrefix("0.0.0.0/0"), nil, false},
		{"reserved outside", netip.MustParsePrefix("10.0.0.0/24"), []netip.Addr{netip.MustParseAddr("10.0.1.1")}, false},
		{"reserved network", netip.MustParsePrefix("10.0.0.0/24"), []netip.Addr{netip.MustParseAddr("10.0.0.0")}, false},
		{"reserved broadcast", netip.MustParsePrefix("10.0.0.0/24"), []netip.Addr{netip.MustParseAddr("10.0.0.255")}, false},
		{"reserved ipv6", netip.MustParsePrefix("10.0.0.0/24"), []netip.Addr{netip.MustParseAddr("fd00::1")}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.prefix, tc.reserved...)
			if tc.ok && err != nil {
				t.Fatalf("New: %v", err)
			}
			if !tc.ok && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("New: got %v, want InvalidArgument", err)
			}
		})
	}
}

func TestAllocateAll(t *testing.T) {
	for _, tc := range []struct {
		cidr     string
		reserved []string
		want     []string // every address handed out, in order
	}{
		{"10.0.0.0/29", []string{"10.0.0.1"}, []string{"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"}},
		{"10.0.0.0/29", []string{"10.0.0.4"}, []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6"}},
		{"10.0.0.0/29", nil, []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"}},
		{"192.168.7.0/30", []string{"192.168.7.1"}, []string{"192.168.7.2"}},
		{"192.168.7.0/30", []string{"192.168.7.2", "192.168.7.1"}, nil},
	} {
		t.Run(fmt.Sprintf("%s-%v", tc.cidr, tc.reserved), func(t *testing.T) {
			p := mustPool(t, tc.cidr, tc.reserved...)
			if p.Capacity() != len(tc.want) {
				t.Errorf("Capacity = %d, want %d", p.Capacity(), len(tc.want))
			}
			for i, w := range tc.want {
				a, err := p.Allocate(fmt.Sprintf("o%d", i))
				if err != nil {
					t.Fatalf("Allocate %d: %v", i, err)
				}
				if a.String() != w {
					t.Errorf("Allocate %d = %s, want %s", i, a, w)
				}
			}
			_, err := p.Allocate("one-too-many")
			if !errors.Is(err, errdefs.ErrResourceExhausted) {
				t.Fatalf("Allocate past capacity: got %v, want ResourceExhausted", err)
			}
			if want := p.Prefix().String(); !strings.Contains(err.Error(), want) {
				t.Errorf("exhaustion error %q does not name %s", err, want)
			}
			if p.Len() != len(tc.want) {
				t.Errorf("Len = %d after failed allocate, want %d", p.Len(), len(tc.want))
			}
		})
	}
}

func TestNextFitAndRelease(t *testing.T) {
	p := mustPool(t, "10.1.0.0/29", "10.1.0.1") // .2 .. .6
	steps := []struct {
		op    string // "a" allocate, "r" release
		owner string
		want  string // address allocated or released ("" for none)
	}{
		{"a", "x", "10.1.0.2"},
		{"a", "y", "10.1.0.3"},
		{"r", "x", "10.1.0.2"},
		{"r", "x", ""},         // idempotent
		{"a", "z", "10.1.0.4"}, // next-fit: .2 is free but not reused at once
		{"a", "w", "10.1.0.5"},
		{"a", "v", "10.1.0.6"},
		{"a", "u", "10.1.0.2"}, // wraps round to the freed address
		{"r", "w", "10.1.0.5"},
		{"a", "t", "10.1.0.5"}, // the only free address
		{"r", "nobody", ""},
	}
	for i, s := range steps {
		switch s.op {
		case "a":
			a, err := p.Allocate(s.owner)
			if err != nil || a.String() != s.want {
				t.Fatalf("step %d: Allocate(%s) = %v, %v; want %s", i, s.owner, a, err, s.want)
			}
			if got, ok := p.Lookup(s.owner); !ok || got != a {
				t.Fatalf("step %d: Lookup(%s) = %v, %v", i, s.owner, got, ok)
			}
		case "r":
			a, ok := p.Release(s.owner)
			if (s.want == "") == ok || (ok && a.String() != s.want) {
				t.Fatalf("step %d: Release(%s) = %v, %v; want %q", i, s.owner, a, ok, s.want)
			}
			if _, ok := p.Lookup(s.owner); ok {
				t.Fatalf("step %d: %s still holds a lease", i, s.owner)
			}
		}
	}
}

func TestNoDoubleLease(t *testing.T) {
	p := mustPool(t, "10.2.0.0/29", "10.2.0.1")
	a, err := p.Allocate("x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Allocate("x"); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("second Allocate for one owner: got %v, want AlreadyExists", err)
	}
	if err := p.Reserve(a, "y"); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("Reserve of a held address: got %v, want AlreadyExists", err)
	}
	if _, err := p.Allocate(""); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("Allocate with empty owner: got %v, want InvalidArgument", err)
	}
}

func TestReserve(t *testing.T) {
	p := mustPool(t, "10.3.0.0/29", "10.3.0.1")
	for _, tc := range []struct {
		addr, owner string
		check       func(error) bool
	}{
		{"10.3.0.4", "a", func(err error) bool { return err == nil }},
		{"10.3.0.4", "a", func(err error) bool { return err == nil }}, // idempotent
		{"10.3.0.4", "b", isClass(errdefs.ErrAlreadyExists)},
		{"10.3.0.5", "a", isClass(errdefs.ErrAlreadyExists)}, // a already holds .4
		{"10.3.0.0", "c", isClass(errdefs.ErrInvalidArgument)},
		{"10.3.0.1", "c", isClass(errdefs.ErrInvalidArgument)}, // gateway
		{"10.3.0.7", "c", isClass(errdefs.ErrInvalidArgument)}, // broadcast
		{"10.4.0.2", "c", isClass(errdefs.ErrInvalidArgument)},
		{"fd00::2", "c", isClass(errdefs.ErrInvalidArgument)},
		{"10.3.0.2", "", isClass(errdefs.ErrInvalidArgument)},
	} {
		err := p.Reserve(netip.MustParseAddr(tc.addr), tc.owner)
		if !tc.check(err) {
			t.Errorf("Reserve(%s, %q) = %v", tc.addr, tc.owner, err)
		}
	}
	// Allocation skips the reserved address.
	seen := map[netip.Addr]bool{}
	for i := range 4 {
		a, err := p.Allocate(fmt.Sprint(i))
		if err != nil {
			t.Fatalf("Allocate %d: %v", i, err)
		}
		if a.String() == "10.3.0.4" || seen[a] {
			t.Fatalf("Allocate %d handed out %s again", i, a)
		}
		seen[a] = true
	}
	if _, err := p.Allocate("full"); !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Fatalf("got %v, want ResourceExhausted", err)
	}
	if got := p.Leases(); len(got) != 5 || got["a"].String() != "10.3.0.4" {
		t.Fatalf("Leases = %v", got)
	}
}

func TestConcurrentAllocate(t *testing.T) {
	p := mustPool(t, "10.5.0.0/22", "10.5.0.1") // 1021 usable
	const workers, each = 8, 100
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		seen = map[netip.Addr]string{}
		errs []error
	)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				owner := fmt.Sprintf("%d-%d", w, i)
				a, err := p.Allocate(owner)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else if prev, dup := seen[a]; dup {
					errs = append(errs, fmt.Errorf("%s handed to %s and %s", a, prev, owner))
				} else {
					seen[a] = owner
				}
				mu.Unlock()
				if i%3 == 0 && err == nil {
					mu.Lock()
					delete(seen, a) // before Release: a may be handed out again right after
					mu.Unlock()
					p.Release(owner)
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if p.Len() != len(seen) {
		t.Fatalf("Len = %d, want %d", p.Len(), len(seen))
	}
}

// isClass returns a check that an error is of the errdefs class.
func isClass(class error) func(error) bool {
	return func(err error) bool { return errors.Is(err, class) }
}
