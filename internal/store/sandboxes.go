package store

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	bolt "go.etcd.io/bbolt"
)

// PutSandbox creates or replaces a sandbox record. It is durable when it
// returns.
func (s *Store) PutSandbox(ctx context.Context, rec SandboxRecord) error {
	return putJSON(ctx, s, bktSandboxes, "sandbox", rec.ID, rec)
}

// CreateSandbox stores a new sandbox's record together with its address
// leases, in one transaction (one fsync): both are durable when it returns,
// or neither is written. An address leased to another sandbox is an error
// of class errdefs.ErrAlreadyExists.
func (s *Store) CreateSandbox(ctx context.Context, rec SandboxRecord, leases ...Lease) error {
	if err := validKey("sandbox id", rec.ID); err != nil {
		return err
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode sandbox %q: %w", rec.ID, err)
	}
	type encoded struct{ k, v []byte }
	enc := make([]encoded, 0, len(leases))
	for _, l := range leases {
		if l.SandboxID != rec.ID {
			return fmt.Errorf("create sandbox %q: lease %s names sandbox %q: %w", rec.ID, l.IP, l.SandboxID, errdefs.ErrInvalidArgument)
		}
		k, v, err := encodeLease(l)
		if err != nil {
			return fmt.Errorf("create sandbox %q: %w", rec.ID, err)
		}
		enc = append(enc, encoded{k, v})
	}
	err = s.update(ctx, func(root *bolt.Bucket) error {
		for i, e := range enc {
			if err := putLease(root, leases[i], e.k, e.v); err != nil {
				return err
			}
		}
		return root.Bucket(bktSandboxes).Put([]byte(rec.ID), data)
	})
	if err != nil {
		return fmt.Errorf("create sandbox %q: %w", rec.ID, err)
	}
	return nil
}

// GetSandbox returns a sandbox record, or an error of class
// errdefs.ErrNotFound.
func (s *Store) GetSandbox(ctx context.Context, id string) (SandboxRecord, error) {
	var rec SandboxRecord
	err := s.view(ctx, func(root *bolt.Bucket) error {
		data := root.Bucket(bktSandboxes).Get([]byte(id))
		if data == nil {
			return errdefs.ErrNotFound
		}
		return decode(data, &rec)
	})
	if err != nil {
		return SandboxRecord{}, fmt.Errorf("get sandbox %q: %w", id, err)
	}
	return rec, nil
}

// ListSandboxes returns every sandbox record, ordered by id.
func (s *Store) ListSandboxes(ctx context.Context) ([]SandboxRecord, error) {
	return listAll[SandboxRecord](ctx, s, bktSandboxes, "sandbox")
}

// DeleteSandbox deletes a sandbox record and, in the same transaction,
// every lease held by that sandbox. It returns an error of class
// errdefs.ErrNotFound when there was neither a record nor a lease.
func (s *Store) DeleteSandbox(ctx context.Context, id string) error {
	err := s.update(ctx, func(root *bolt.Bucket) error {
		found := false
		sb := root.Bucket(bktSandboxes)
		if sb.Get([]byte(id)) != nil {
			found = true
			if err := sb.Delete([]byte(id)); err != nil {
				return err
			}
		}
		lb := root.Bucket(bktLeases)
		var doomed [][]byte
		err := lb.ForEach(func(k, v []byte) error {
			var l Lease
			if err := decode(v, &l); err != nil {
				return fmt.Errorf("lease %x: %w", k, err)
			}
			if l.SandboxID == id {
				doomed = append(doomed, append([]byte(nil), k...))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range doomed {
			found = true
			if err := lb.Delete(k); err != nil {
				return err
			}
		}
		if !found {
			return errdefs.ErrNotFound
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete sandbox %q: %w", id, err)
	}
	return nil
}

// validKey checks a non-empty key that fits in bbolt.
func validKey(what, k string) error {
	if k == "" {
		return fmt.Errorf("empty %s: %w", what, errdefs.ErrInvalidArgument)
	}
	if len(k) > bolt.MaxKeySize {
		return fmt.Errorf("%s of %d bytes is too long: %w", what, len(k), errdefs.ErrInvalidArgument)
	}
	return nil
}

// decode unmarshals a stored JSON value; a value that does not decode is
// reported as corruption.
func decode(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%w: bad record: %w", ErrCorrupt, err)
	}
	return nil
}
