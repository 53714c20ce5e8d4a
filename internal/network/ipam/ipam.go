// Package ipam leases IPv4 addresses out of one prefix.
//
// A Pool never hands out the network address, the broadcast address or an
// address reserved at construction (the gateway), and never hands out an
// address twice while it is held. Allocation is next-fit: the search starts
// after the most recently allocated address, so an address that was just
// released is not handed out again at once (stale ARP entries and
// connections to a removed sandbox do not reach its successor).
//
// A Pool is safe for concurrent use. It is pure bookkeeping: it touches no
// system state.
package ipam

import (
	"fmt"
	"maps"
	"net/netip"
	"sync"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// Pool leases the addresses of one IPv4 prefix to owners (sandbox ids).
type Pool struct {
	prefix   netip.Prefix
	base     uint32 // network address
	size     uint32 // number of addresses in prefix, network and broadcast included
	reserved map[uint32]bool

	// mu guards the fields that follow.
	mu     sync.Mutex
	byAddr map[uint32]string     // offset → owner
	byOwn  map[string]netip.Addr // owner → address
	last   uint32                // offset of the most recent allocation (0: none yet)
}

// New returns a pool over prefix, which must be an IPv4 prefix without host
// bits and with at least four addresses (a /30 or larger). reserved
// addresses (typically the gateway) must lie inside prefix and are never
// leased. Errors are of class errdefs.ErrInvalidArgument.
func New(prefix netip.Prefix, reserved ...netip.Addr) (*Pool, error) {
	switch {
	case !prefix.IsValid():
		return nil, fmt.Errorf("ipam: invalid prefix: %w", errdefs.ErrInvalidArgument)
	case !prefix.Addr().Is4():
		return nil, fmt.Errorf("ipam: %s: only IPv4 is supported: %w", prefix, errdefs.ErrInvalidArgument)
	case prefix != prefix.Masked():
		return nil, fmt.Errorf("ipam: %s has host bits set (want %s): %w", prefix, prefix.Masked(), errdefs.ErrInvalidArgument)
	case prefix.Bits() > 30:
		return nil, fmt.Errorf("ipam: %s is too small (a /30 or larger is needed): %w", prefix, errdefs.ErrInvalidArgument)
	case prefix.Bits() == 0:
		return nil, fmt.Errorf("ipam: %s is too large: %w", prefix, errdefs.ErrInvalidArgument)
	}
	p := &Pool{
		prefix:   prefix,
		base:     toUint(prefix.Addr()),
		size:     uint32(1) << (32 - prefix.Bits()),
		reserved: map[uint32]bool{},
		byAddr:   map[uint32]string{},
		byOwn:    map[string]netip.Addr{},
	}
	for _, r := range reserved {
		off, err := p.offset(r)
		if err != nil {
			return nil, fmt.Errorf("ipam: reserved address: %w", err)
		}
		if off == 0 || off == p.size-1 {
			return nil, fmt.Errorf("ipam: reserved address %s is the network or broadcast address of %s: %w",
				r, prefix, errdefs.ErrInvalidArgument)
		}
		p.reserved[off] = true
	}
	return p, nil
}

// Prefix returns the pool's prefix.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// Capacity returns how many addresses the pool can lease at once.
func (p *Pool) Capacity() int { return int(p.size) - 2 - len(p.reserved) }

// Allocate leases a free address to owner. An owner holds at most one lease:
// a second Allocate for the same owner fails with errdefs.ErrAlreadyExists.
// When every address is held it fails with errdefs.ErrResourceExhausted.
func (p *Pool) Allocate(owner string) (netip.Addr, error) {
	if owner == "" {
		return netip.Addr{}, fmt.Errorf("ipam: empty owner: %w", errdefs.ErrInvalidArgument)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if a, ok := p.byOwn[owner]; ok {
		return netip.Addr{}, fmt.Errorf("ipam: %q already holds %s: %w", owner, a, errdefs.ErrAlreadyExists)
	}
	if len(p.byAddr) >= p.Capacity() {
		return netip.Addr{}, fmt.Errorf("ipam: no free address left in %s (%d leased): %w",
			p.prefix, len(p.byAddr), errdefs.ErrResourceExhausted)
	}
	// Usable offsets are 1 .. size-2. Walk them once, starting after last.
	usable := p.size - 2
	for i := uint32(0); i < usable; i++ {
		off := (p.last+i)%usable + 1 // p.last is 0 at first: starts at offset 1
		if p.reserved[off] {
			continue
		}
		if _, held := p.byAddr[off]; held {
			continue
		}
		p.byAddr[off] = owner
		p.last = off
		a := p.addr(off)
		p.byOwn[owner] = a
		return a, nil
	}
	// Unreachable: the count above says a free address exists.
	return netip.Addr{}, fmt.Errorf("ipam: no free address left in %s: %w", p.prefix, errdefs.ErrResourceExhausted)
}

// Reserve records that owner holds addr (used to recover leases after a
// restart). Reserving the lease an owner already holds is a no-op. The
// address must be leasable (inside the prefix, not network, broadcast or
// reserved: errdefs.ErrInvalidArgument) and not held by someone else, nor
// may owner hold another address (errdefs.ErrAlreadyExists).
func (p *Pool) Reserve(addr netip.Addr, owner string) error {
	if owner == "" {
		return fmt.Errorf("ipam: empty owner: %w", errdefs.ErrInvalidArgument)
	}
	off, err := p.offset(addr)
	if err != nil {
		return fmt.Errorf("ipam: reserve: %w", err)
	}
	if off == 0 || off == p.size-1 || p.reserved[off] {
		return fmt.Errorf("ipam: %s is not a leasable address of %s: %w", addr, p.prefix, errdefs.ErrInvalidArgument)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if cur, ok := p.byAddr[off]; ok {
		if cur == owner {
			return nil
		}
		return fmt.Errorf("ipam: %s is held by %q: %w", addr, cur, errdefs.ErrAlreadyExists)
	}
	if a, ok := p.byOwn[owner]; ok {
		return fmt.Errorf("ipam: %q already holds %s: %w", owner, a, errdefs.ErrAlreadyExists)
	}
	p.byAddr[off] = owner
	p.byOwn[owner] = addr
	return nil
}

// Release frees owner's lease and returns the address it held. Releasing an
// owner without a lease is not an error (ok is false).
func (p *Pool) Release(owner string) (addr netip.Addr, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	a, ok := p.byOwn[owner]
	if !ok {
		return netip.Addr{}, false
	}
	delete(p.byOwn, owner)
	off, _ := p.offset(a)
	delete(p.byAddr, off)
	return a, true
}

// Lookup returns owner's address.
func (p *Pool) Lookup(owner string) (netip.Addr, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	a, ok := p.byOwn[owner]
	return a, ok
}

// Leases returns a copy of every lease, owner → address.
func (p *Pool) Leases() map[string]netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.byOwn)
}

// Len returns the number of leases held.
func (p *Pool) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.byOwn)
}

// offset returns a's offset from the network address, or an
// errdefs.ErrInvalidArgument error when a is not inside the prefix.
func (p *Pool) offset(a netip.Addr) (uint32, error) {
	if !a.Is4() || !p.prefix.Contains(a) {
		return 0, fmt.Errorf("%s is not inside %s: %w", a, p.prefix, errdefs.ErrInvalidArgument)
	}
	return toUint(a) - p.base, nil
}

// addr returns the address at offset off.
func (p *Pool) addr(off uint32) netip.Addr { return fromUint(p.base + off) }

func toUint(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func fromUint(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
