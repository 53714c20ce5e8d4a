package sandbox

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/store"
)

// recordWriter orders the store writes of one sandbox.
//
// A change to a sandbox is decided under inst.mu, which also bumps
// inst.gen (markLocked); the store write happens after inst.mu is released,
// in flush, which holds only the writer's mu across the commit (the fsync).
// flush copies the newest record under inst.mu and writes it unless a
// later flush already wrote that generation or a newer one, so the store
// never goes back to an older record and each sandbox's writes stay in
// order. Lock order: recordWriter.mu, then inst.mu (briefly). Get and List
// take only inst.mu, so they never wait behind a store commit.
type recordWriter struct {
	mu sync.Mutex
	// written is the generation last written to the store. Guarded by mu.
	written uint64
	// off is set when a new sandbox's record could not be created: the
	// sandbox is being removed and must never get a record. Guarded by
	// mu.
	off bool
}

// markLocked records that inst changed in a way the store must hear of.
// inst.mu must be held.
func (inst *instance) markLocked() { inst.gen++ }

// flush writes inst's newest record to the store, or deletes it once the
// sandbox is removed; it does nothing when the store has it already. It
// must be called without inst.mu held. The write is bounded by
// storeTimeout, and ctx's cancellation does not cut it short: a change
// that was made must reach the disk. A full disk (ENOSPC, EDQUOT) is
// ResourceExhausted; the store then still holds the record it had, and
// the next successful flush writes the newest one.
func (m *Manager) flush(ctx context.Context, inst *instance) error {
	inst.w.mu.Lock()
	defer inst.w.mu.Unlock()
	inst.mu.Lock()
	gen, removed := inst.gen, inst.removed
	if gen <= inst.w.written || inst.w.off {
		inst.mu.Unlock()
		return nil
	}
	rec := recordOf(inst)
	inst.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	var err error
	if removed {
		if err = m.cfg.Store.DeleteSandbox(ctx, inst.id); errors.Is(err, errdefs.ErrNotFound) {
			err = nil
		}
	} else {
		err = m.cfg.Store.PutSandbox(ctx, rec)
	}
	if err != nil {
		return fmt.Errorf("sandbox %s: writing its record: %w", inst.id, noSpace(err))
	}
	inst.w.written = gen
	return nil
}

// flushLogged is flush for changes whose caller cannot undo them (a VMM
// that exited, a boot that finished): a failure is logged, and the next
// successful flush of the sandbox writes the newest record anyway.
func (m *Manager) flushLogged(ctx context.Context, inst *instance) {
	if err := m.flush(ctx, inst); err != nil {
		inst.log.Error("writing the sandbox record to the store", "error", err)
	}
}

// createRecord writes a new sandbox's record; it fails when the id has one
// already.
func (m *Manager) createRecord(ctx context.Context, rec store.SandboxRecord) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	if err := m.cfg.Store.CreateSandbox(ctx, rec); err != nil {
		return fmt.Errorf("sandbox %s: recording it: %w", rec.ID, noSpace(err))
	}
	return nil
}
