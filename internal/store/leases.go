package store

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	bolt "go.etcd.io/bbolt"
)

// leaseKey is the address's 4 or 16 bytes.
func leaseKey(ip netip.Addr) ([]byte, error) {
	if !ip.IsValid() || ip.Zone() != "" {
		return nil, fmt.Errorf("lease address %q: %w", ip, errdefs.ErrInvalidArgument)
	}
	return ip.AsSlice(), nil
}

// PutLease records that l.IP belongs to l.SandboxID. Putting the same lease
// again is a no-op; an address leased to another sandbox is an error of
// class errdefs.ErrAlreadyExists.
func (s *Store) PutLease(ctx context.Context, l Lease) error {
	k, data, err := encodeLease(l)
	if err != nil {
		return err
	}
	err = s.update(ctx, func(root *bolt.Bucket) error { return putLease(root, l, k, data) })
	if err != nil {
		return fmt.Errorf("put lease %s: %w", l.IP, err)
	}
	return nil
}

// encodeLease validates l and returns its key and value.
func encodeLease(l Lease) (key, data []byte, err error) {
	k, err := leaseKey(l.IP)
	if err != nil {
		return nil, nil, err
	}
	if err := validKey("lease sandbox id", l.SandboxID); err != nil {
		return nil, nil, err
	}
	data, err = json.Marshal(l)
	if err != nil {
		return nil, nil, fmt.Errorf("encode lease %s: %w", l.IP, err)
	}
	return k, data, nil
}

// putLease stores an encoded lease unless its address belongs to another
// sandbox.
func putLease(root *bolt.Bucket, l Lease, k, data []byte) error {
	b := root.Bucket(bktLeases)
	if old := b.Get(k); old != nil {
		var cur Lease
		if err := decode(old, &cur); err != nil {
			return err
		}
		if cur.SandboxID == l.SandboxID {
			return nil
		}
		return fmt.Errorf("%s leased to sandbox %q: %w", l.IP, cur.SandboxID, errdefs.ErrAlreadyExists)
	}
	return b.Put(k, data)
}

// DeleteLease releases an address; an address not leased is an error of
// class errdefs.ErrNotFound.
func (s *Store) DeleteLease(ctx context.Context, ip netip.Addr) error {
	k, err := leaseKey(ip)
	if err != nil {
		return err
	}
	err = s.update(ctx, func(root *bolt.Bucket) error {
		b := root.Bucket(bktLeases)
		if b.Get(k) == nil {
			return errdefs.ErrNotFound
		}
		return b.Delete(k)
	})
	if err != nil {
		return fmt.Errorf("delete lease %s: %w", ip, err)
	}
	return nil
}

// ListLeases returns every lease, IPv4 before IPv6, each in address order.
func (s *Store) ListLeases(ctx context.Context) ([]Lease, error) {
	out, err := listAll[Lease](ctx, s, bktLeases, "lease")
	slices.SortFunc(out, func(a, b Lease) int { return a.IP.Compare(b.IP) })
	return out, err
}
