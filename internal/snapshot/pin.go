package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// Acquire pins a snapshot for reading (a restore); Delete waits for every
// pin to be released. Call release exactly once (later calls do nothing).
// A snapshot that is being deleted is not found.
func (c *Catalog) Acquire(id string) (m Meta, release func(), err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[id]
	if e == nil || e.deleting {
		return Meta{}, nil, notFound(id)
	}
	if e.pins == 0 {
		e.idle = make(chan struct{})
	}
	e.pins++
	var once sync.Once
	release = func() {
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			e.pins--
			if e.pins == 0 {
				close(e.idle)
				e.idle = nil
			}
		})
	}
	return cloneMeta(e.meta), release, nil
}

// Delete removes a snapshot and its files. It waits for pins held by
// restores until ctx ends, then fails with errdefs.ErrFailedPrecondition.
// The directory is first renamed to a temporary name, so a crash part way
// leaves no incomplete snapshot behind; the sandbox's directory is removed
// when it becomes empty.
func (c *Catalog) Delete(ctx context.Context, id string) error {
	c.mu.Lock()
	var e *entry
	for {
		e = c.entries[id]
		if e == nil || e.deleting {
			c.mu.Unlock()
			return notFound(id)
		}
		if e.pins == 0 {
			break
		}
		idle := e.idle
		c.mu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
			return fmt.Errorf("snapshot %s is being restored; try again: %w", id, errdefs.ErrFailedPrecondition)
		}
		c.mu.Lock()
	}
	e.deleting = true
	m := e.meta
	c.mu.Unlock()

	trash := filepath.Join(filepath.Dir(m.Dir), tmpPrefix+id+"-deleted")
	if err := os.Rename(m.Dir, trash); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.mu.Lock()
		e.deleting = false
		c.mu.Unlock()
		return fmt.Errorf("snapshot %s: delete: %w", id, err)
	}
	c.mu.Lock()
	delete(c.entries, id)
	if key := (nameKey{m.SandboxID, m.Name}); c.names[key] == id {
		delete(c.names, key)
	}
	c.mu.Unlock()
	if err := os.RemoveAll(trash); err != nil {
		// The snapshot is gone from the catalog; Open removes the rest.
		c.log.Warn("snapshot catalog: cannot remove deleted snapshot's files", "path", trash, "error", err)
	}
	if err := syncDir(filepath.Dir(m.Dir)); err != nil {
		c.log.Debug("snapshot catalog: sync after delete", "error", err)
	}
	c.removeEmptyParent(m.SandboxID)
	c.log.Debug("snapshot deleted", "id", id, "name", m.Name, "sandbox", m.SandboxID)
	return nil
}
