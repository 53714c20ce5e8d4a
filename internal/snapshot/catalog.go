package snapshot

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/ids"
)

// Catalog is the set of complete snapshots under one directory. Make one
// with Open. It is safe for concurrent use.
type Catalog struct {
	dir string
	log *slog.Logger
	ids *ids.Generator

	// mu guards the fields that follow. It is never held across I/O.
	mu      sync.Mutex
	entries map[string]*entry        // committed snapshots by id
	pending map[string]*pendingEntry // snapshots being written by id
	names   map[nameKey]string       // (sandbox, name) -> id, committed and pending
}

// nameKey identifies a snapshot name within its sandbox.
type nameKey struct{ sandboxID, name string }

// entry is a committed snapshot.
type entry struct {
	meta Meta
	// pins counts Acquire calls not yet released.
	pins int
	// idle is closed when pins drops to zero; nil while pins is zero.
	idle chan struct{}
	// deleting is set once Delete has started removing the files.
	deleting bool
}

// pendingEntry is a reserved name with a temporary directory.
type pendingEntry struct {
	sandboxID, name string
	// busy is set while Commit or Abort works on it.
	busy bool
}

// Open loads every complete snapshot under dir (data_dir/snapshots),
// creating dir if needed. Incomplete directories (no valid meta.json, a file
// missing or of the wrong size, leftover temporary directories) are logged
// and ignored (temporary ones removed). A nil log discards log lines.
func Open(dir string, log *slog.Logger) (*Catalog, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if dir == "" {
		return nil, fmt.Errorf("snapshot catalog: empty directory: %w", errdefs.ErrInvalidArgument)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("snapshot catalog %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, dirMode); err != nil {
		return nil, fmt.Errorf("snapshot catalog %s: %w", abs, classify(err))
	}
	c := &Catalog{
		dir:     abs,
		log:     log,
		ids:     ids.NewGenerator(nil),
		entries: make(map[string]*entry),
		pending: make(map[string]*pendingEntry),
		names:   make(map[nameKey]string),
	}
	sandboxes, err := os.ReadDir(abs)
	if err != nil {
		return nil, fmt.Errorf("snapshot catalog %s: %w", abs, err)
	}
	for _, sd := range sandboxes {
		path := filepath.Join(abs, sd.Name())
		switch {
		case !sd.IsDir():
			log.Warn("snapshot catalog: ignoring unexpected entry", "path", path, "type", sd.Type().String())
		case !ids.Valid(sd.Name()):
			log.Warn("snapshot catalog: ignoring directory that is not named after a sandbox id", "path", path)
		default:
			c.loadSandbox(sd.Name(), path)
		}
	}
	log.Debug("snapshot catalog opened", "dir", abs, "snapshots", len(c.entries))
	return c, nil
}

// loadSandbox loads the snapshots of one sandbox directory.
func (c *Catalog) loadSandbox(sandboxID, dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		c.log.Warn("snapshot catalog: ignoring unreadable sandbox directory", "path", dir, "error", err)
		return
	}
	// ReadDir sorts by name and ids sort by creation time: on a (corrupt)
	// duplicate name the older snapshot wins.
	for _, e := range ents {
		path := filepath.Join(dir, e.Name())
		switch {
		case strings.HasPrefix(e.Name(), tmpPrefix):
			if err := os.RemoveAll(path); err != nil {
				c.log.Warn("snapshot catalog: cannot remove leftover temporary directory", "path", path, "error", err)
				continue
			}
			c.log.Info("snapshot catalog: removed leftover temporary directory", "path", path)
		case !e.IsDir():
			c.log.Warn("snapshot catalog: ignoring unexpected entry", "path", path, "type", e.Type().String())
		case !ids.Valid(e.Name()):
			c.log.Warn("snapshot catalog: ignoring directory that is not named after a snapshot id", "path", path)
		default:
			m, err := loadSnapshot(sandboxID, e.Name(), path)
			if err != nil {
				c.log.Warn("snapshot catalog: ignoring incomplete snapshot directory", "path", path, "reason", err.Error())
				continue
			}
			key := nameKey{sandboxID, m.Name}
			if other, dup := c.names[key]; dup {
				c.log.Warn("snapshot catalog: ignoring snapshot with a duplicate name", "path", path,
					"name", m.Name, "kept", other)
				continue
			}
			c.entries[m.ID] = &entry{meta: m}
			c.names[key] = m.ID
		}
	}
	// A sandbox directory left empty (by a crash during a delete, say) is
	// removed; a non-empty one stays.
	if err := os.Remove(dir); err == nil {
		c.log.Debug("snapshot catalog: removed empty sandbox directory", "path", dir)
	}
}

// Dir returns the catalog's directory (absolute).
func (c *Catalog) Dir() string { return c.dir }

// List returns snapshots, all (sandboxID empty) or of one sandbox, by id.
func (c *Catalog) List(sandboxID string) []Meta {
	c.mu.Lock()
	out := make([]Meta, 0, len(c.entries))
	for _, e := range c.entries {
		if sandboxID == "" || e.meta.SandboxID == sandboxID {
			out = append(out, cloneMeta(e.meta))
		}
	}
	c.mu.Unlock()
	slices.SortFunc(out, func(a, b Meta) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Get returns one snapshot (errdefs.ErrNotFound).
func (c *Catalog) Get(id string) (Meta, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[id]
	if e == nil {
		return Meta{}, notFound(id)
	}
	return cloneMeta(e.meta), nil
}

// GetByName returns the snapshot of sandboxID called name
// (errdefs.ErrNotFound; a snapshot still being written is not found).
func (c *Catalog) GetByName(sandboxID, name string) (Meta, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[c.names[nameKey{sandboxID, name}]]; e != nil {
		return cloneMeta(e.meta), nil
	}
	return Meta{}, fmt.Errorf("snapshot %s of sandbox %s: %w", strconv.QuoteToASCII(name), strconv.QuoteToASCII(sandboxID),
		errdefs.ErrNotFound)
}

func notFound(id string) error {
	return fmt.Errorf("snapshot %s: %w", strconv.QuoteToASCII(id), errdefs.ErrNotFound)
}
