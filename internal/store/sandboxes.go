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

// CreateSandbox stores the record of a new sandbox. It is PutSandbox for
// an id that has no record yet: a record with the same id is left as it is
// and the call fails with an error of class errdefs.ErrAlreadyExists. It
// is durable when it returns.
func (s *Store) CreateSandbox(ctx context.Context, rec SandboxRecord) error {
	if err := validKey("sandbox id", rec.ID); err != nil {
		return err
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode sandbox %q: %w", rec.ID, err)
	}
	err = s.update(ctx, func(root *bolt.Bucket) error {
		b := root.Bucket(bktSandboxes)
		if b.Get([]byte(rec.ID)) != nil {
			return errdefs.ErrAlreadyExists
		}
		return b.Put([]byte(rec.ID), data)
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

// DeleteSandbox deletes a sandbox record; a missing one is an error of
// class errdefs.ErrNotFound. It is durable when it returns.
func (s *Store) DeleteSandbox(ctx context.Context, id string) error {
	err := s.update(ctx, func(root *bolt.Bucket) error {
		b := root.Bucket(bktSandboxes)
		if b.Get([]byte(id)) == nil {
			return errdefs.ErrNotFound
		}
		return b.Delete([]byte(id))
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
