package snapshot

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/ids"
)

// Commit computes sizes and checksums, writes meta.json and renames the
// temporary directory into place atomically. On failure nothing remains.
// It is CommitContext without a deadline.
func (c *Catalog) Commit(p *Pending, m Meta) (Meta, error) {
	return c.CommitContext(context.Background(), p, m)
}

// CommitContext is Commit bounded by ctx (checked between chunks of the
// checksums; the files are synced and checksummed concurrently). m
// supplies the descriptive fields; ID, SandboxID, Name, Files and Dir are
// set by the catalog, CreatedAt defaults to now and Type to TypeFull.
// Entries of the temporary directory other than the snapshot's files are
// removed. On success p is consumed (a later Abort does nothing); on
// failure the temporary directory is removed, the name is released and the
// error says which step failed (errdefs.ErrResourceExhausted when the file
// system is full).
func (c *Catalog) CommitContext(ctx context.Context, p *Pending, m Meta) (Meta, error) {
	if p == nil {
		return Meta{}, fmt.Errorf("snapshot commit: nil pending snapshot: %w", errdefs.ErrInvalidArgument)
	}
	if !c.claim(p) {
		return Meta{}, fmt.Errorf("snapshot %s: commit: not a pending snapshot of this catalog (already committed or aborted?): %w",
			p.ID, errdefs.ErrFailedPrecondition)
	}
	final := filepath.Join(c.dir, p.SandboxID, p.ID)
	out, step, renamed, err := c.commit(ctx, p, m, final)
	if err != nil {
		// Remove everything: the temporary directory, or the final one if
		// the rename happened before the failure.
		_ = os.RemoveAll(p.Dir)
		if renamed {
			_ = os.RemoveAll(final)
		}
		c.release(p)
		c.removeEmptyParent(p.SandboxID)
		return Meta{}, fmt.Errorf("snapshot %s (%q of sandbox %s): commit: %s: %w", p.ID, p.Name, p.SandboxID, step, classify(err))
	}
	c.mu.Lock()
	delete(c.pending, p.ID)
	c.entries[out.ID] = &entry{meta: out}
	c.names[nameKey{p.SandboxID, p.Name}] = out.ID
	c.mu.Unlock()
	c.log.Debug("snapshot committed", "id", out.ID, "name", out.Name, "sandbox", out.SandboxID, "bytes", out.SizeBytes())
	return cloneMeta(out), nil
}

// commit does Commit's I/O. It returns the step that failed and whether
// the directory was renamed to final before the failure.
func (c *Catalog) commit(ctx context.Context, p *Pending, m Meta, final string) (_ Meta, step string, renamed bool, _ error) {
	m.ID, m.SandboxID, m.Name = p.ID, p.SandboxID, p.Name
	if m.CreatedAt.IsZero() {
		m.CreatedAt = time.Now()
	}
	m.CreatedAt = m.CreatedAt.UTC()
	if m.Type == "" {
		m.Type = TypeFull
	}
	if m.Type != TypeFull && m.Type != TypeDiff {
		return Meta{}, "meta", false, fmt.Errorf("unknown snapshot type %q: %w", m.Type, errdefs.ErrInvalidArgument)
	}
	if m.ParentID != "" && !ids.Valid(m.ParentID) {
		return Meta{}, "meta", false, fmt.Errorf("invalid parent id %s: %w", strconv.QuoteToASCII(m.ParentID), errdefs.ErrInvalidArgument)
	}
	// Remove anything that is not part of the snapshot (scratch files
	// such as a diff layer), so the directory holds exactly its files.
	ents, err := os.ReadDir(p.Dir)
	if err != nil {
		return Meta{}, "read temporary directory", false, err
	}
	for _, e := range ents {
		if !slices.Contains(dataFiles, e.Name()) {
			if err := os.RemoveAll(filepath.Join(p.Dir, e.Name())); err != nil {
				return Meta{}, "remove scratch file " + e.Name(), false, err
			}
		}
	}
	m.Files, step, err = syncAndHashAll(ctx, p.Dir)
	if err != nil {
		return Meta{}, step, false, err
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Meta{}, "encode " + MetaName, false, err
	}
	if err := writeFileSync(filepath.Join(p.Dir, MetaName), append(data, '\n')); err != nil {
		return Meta{}, "write " + MetaName, false, err
	}
	if err := syncDir(p.Dir); err != nil {
		return Meta{}, "sync temporary directory", false, err
	}
	if err := ctx.Err(); err != nil {
		return Meta{}, "rename into place", false, err
	}
	if err := os.Rename(p.Dir, final); err != nil {
		return Meta{}, "rename into place", false, err
	}
	if err := syncDir(filepath.Dir(final)); err != nil {
		return Meta{}, "sync sandbox directory", true, err
	}
	if err := syncDir(c.dir); err != nil {
		return Meta{}, "sync catalog directory", true, err
	}
	m.Dir = final
	return m, "", true, nil
}

// syncAndHashAll runs syncAndHash on the dataFiles in dir concurrently.
// On failure it returns the step that failed first (the others are
// canceled), once every goroutine has ended.
func syncAndHashAll(ctx context.Context, dir string) (_ map[string]FileInfo, step string, _ error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	infos := make([]FileInfo, len(dataFiles))
	var (
		wg       sync.WaitGroup
		failOnce sync.Once
		failure  error
	)
	for i, name := range dataFiles {
		wg.Go(func() {
			fi, err := syncAndHash(ctx, filepath.Join(dir, name))
			if err != nil {
				failOnce.Do(func() {
					step, failure = "file "+name, err
					cancel()
				})
				return
			}
			fi.Name = name
			infos[i] = fi
		})
	}
	wg.Wait()
	if failure != nil {
		return nil, step, failure
	}
	files := make(map[string]FileInfo, len(dataFiles))
	for _, fi := range infos {
		files[fi.Name] = fi
	}
	return files, "", nil
}

// writeFileSync writes path atomically: a temporary file in the same
// directory, synced, then renamed over path.
func writeFileSync(path string, data []byte) (err error) {
	tmp := filepath.Join(filepath.Dir(path), tmpPrefix+filepath.Base(path))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("fsync: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// syncDir fsyncs a directory so that entries created, renamed or removed
// in it are durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
