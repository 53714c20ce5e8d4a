package snapshot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/ids"
)

// Pending is a snapshot being written, in a temporary directory.
type Pending struct {
	// ID is the snapshot id it will have.
	ID string
	// SandboxID and Name are what Begin was called with.
	SandboxID string
	Name      string
	// Dir is the temporary directory; VMStatePath, MemPath and DiskPath are
	// the files to write in it (absolute paths). Other files written in Dir
	// (a diff layer before MergeDiff, say) are removed by Commit.
	Dir         string
	VMStatePath string
	MemPath     string
	DiskPath    string
}

// Begin validates name, reserves it for sandboxID (names are unique per
// sandbox, counting snapshots still being written: errdefs.ErrAlreadyExists)
// and creates the temporary directory snapshots/{sandbox}/.tmp-{id} (mode
// 0700). sandboxID must be a valid id (errdefs.ErrInvalidArgument). The
// caller writes the files and then calls Commit or Abort.
func (c *Catalog) Begin(sandboxID, name string) (*Pending, error) {
	if !ids.Valid(sandboxID) {
		return nil, fmt.Errorf("snapshot: invalid sandbox id %s: %w", strconv.QuoteToASCII(sandboxID), errdefs.ErrInvalidArgument)
	}
	if err := ValidName(name); err != nil {
		return nil, err
	}
	key := nameKey{sandboxID, name}
	c.mu.Lock()
	if other, ok := c.names[key]; ok {
		_, writing := c.pending[other]
		c.mu.Unlock()
		if writing {
			return nil, fmt.Errorf("snapshot %q of sandbox %s is being written: %w", name, sandboxID, errdefs.ErrAlreadyExists)
		}
		return nil, fmt.Errorf("snapshot %q of sandbox %s (%s): %w", name, sandboxID, other, errdefs.ErrAlreadyExists)
	}
	id := c.ids.New()
	for c.entries[id] != nil || c.pending[id] != nil {
		id = c.ids.New()
	}
	c.names[key] = id
	c.pending[id] = &pendingEntry{sandboxID: sandboxID, name: name}
	c.mu.Unlock()

	tmp := filepath.Join(c.dir, sandboxID, tmpPrefix+id)
	p := &Pending{
		ID:          id,
		SandboxID:   sandboxID,
		Name:        name,
		Dir:         tmp,
		VMStatePath: filepath.Join(tmp, VMStateName),
		MemPath:     filepath.Join(tmp, MemName),
		DiskPath:    filepath.Join(tmp, DiskName),
	}
	if err := c.makeTempDir(filepath.Dir(tmp), tmp); err != nil {
		c.release(p)
		c.removeEmptyParent(sandboxID)
		return nil, fmt.Errorf("snapshot %q of sandbox %s: create temporary directory: %w", name, sandboxID, classify(err))
	}
	return p, nil
}

// makeTempDir creates parent if needed and tmp in it. A concurrent Delete
// may remove parent when it becomes empty; that is retried.
func (c *Catalog) makeTempDir(parent, tmp string) error {
	var err error
	for range 5 {
		if err = os.MkdirAll(parent, dirMode); err != nil {
			return err
		}
		if err = os.Mkdir(tmp, dirMode); !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return err
}

// release forgets the pending snapshot p.
func (c *Catalog) release(p *Pending) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.pending, p.ID)
	key := nameKey{p.SandboxID, p.Name}
	if c.names[key] == p.ID {
		delete(c.names, key)
	}
}

// claim marks the pending snapshot p busy for Commit or Abort. It reports
// false when p is unknown (committed, aborted or not from this catalog) or
// already busy.
func (c *Catalog) claim(p *Pending) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	pe := c.pending[p.ID]
	if pe == nil || pe.busy || pe.sandboxID != p.SandboxID || pe.name != p.Name {
		return false
	}
	pe.busy = true
	return true
}

// removeEmptyParent removes the sandbox's directory if it is empty.
func (c *Catalog) removeEmptyParent(sandboxID string) {
	if err := os.Remove(filepath.Join(c.dir, sandboxID)); err == nil {
		_ = syncDir(c.dir)
	}
}

// Abort removes the temporary directory and releases the name. It does
// nothing when p was committed or aborted already, so callers may defer it.
func (c *Catalog) Abort(p *Pending) {
	if p == nil || !c.claim(p) {
		return
	}
	if err := os.RemoveAll(p.Dir); err != nil {
		c.log.Warn("snapshot catalog: cannot remove aborted snapshot", "path", p.Dir, "error", err)
	}
	c.release(p)
	c.removeEmptyParent(p.SandboxID)
}
