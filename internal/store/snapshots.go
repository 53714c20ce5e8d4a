package store

import (
	"context"
	"fmt"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	bolt "go.etcd.io/bbolt"
)

// PutSnapshot creates or replaces a snapshot record. It is durable when it
// returns.
func (s *Store) PutSnapshot(ctx context.Context, rec SnapshotRecord) error {
	return putJSON(ctx, s, bktSnapshots, "snapshot", rec.ID, rec)
}

// DeleteSnapshot deletes a snapshot record; a missing one is an error of
// class errdefs.ErrNotFound.
func (s *Store) DeleteSnapshot(ctx context.Context, id string) error {
	err := s.update(ctx, func(root *bolt.Bucket) error {
		b := root.Bucket(bktSnapshots)
		if b.Get([]byte(id)) == nil {
			return errdefs.ErrNotFound
		}
		return b.Delete([]byte(id))
	})
	if err != nil {
		return fmt.Errorf("delete snapshot %q: %w", id, err)
	}
	return nil
}

// ListSnapshots returns every snapshot record, ordered by id.
func (s *Store) ListSnapshots(ctx context.Context) ([]SnapshotRecord, error) {
	return listAll[SnapshotRecord](ctx, s, bktSnapshots, "snapshot")
}
