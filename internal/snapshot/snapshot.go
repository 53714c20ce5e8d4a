// Package snapshot is the durable catalog of checkpoints on disk:
// data_dir/snapshots/{sandbox-id}/{snapshot-id}/ holding vmstate, mem,
// disk.ext4 and meta.json.
//
// A snapshot is written by the caller into a temporary directory
// snapshots/{sandbox-id}/.tmp-{snapshot-id}/ obtained from Catalog.Begin.
// Catalog.Commit syncs the files, records their sizes and checksums in
// meta.json (written under a temporary name, synced and renamed) and
// renames the directory into place, so a snapshot directory either is
// complete or does not exist under its final name. Catalog.Abort, or any
// failure of Commit, removes everything.
//
// A file's checksum is AlgorithmSHA256Chunked4M: the SHA-256 of the
// SHA-256 digests of its 4 MiB chunks (with the file size), computed in
// parallel and without reading the chunks that lie in a hole of a sparse
// file, yet depending only on the content. meta.json names the algorithm
// of each file; snapshots committed before it existed name none and keep
// their whole-file SHA-256 (AlgorithmSHA256), which VerifyFile still checks.
//
// Open rebuilds the catalog from the directory tree at daemon start. It
// removes leftover temporary directories, and ignores (with a log line but
// without deleting anything) every directory that is not a complete
// snapshot: a meta.json that is missing or invalid (a checksum algorithm
// this version does not know counts as invalid), or a file that is missing
// or not of the recorded size. Checksums are not verified by Open;
// VerifyFile does that for the callers that need it.
//
// Restores pin a snapshot with Catalog.Acquire; Catalog.Delete waits for
// the pins to be released and never removes files a restore is reading.
//
// A Catalog is safe for concurrent use. Its mutex guards only the
// in-memory index and is never held across file system I/O.
package snapshot

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/ids"
)

// File names inside a snapshot directory.
const (
	VMStateName = "vmstate"
	MemName     = "mem"
	DiskName    = "disk.ext4"
	MetaName    = "meta.json"
)

// Types of snapshot.
const (
	TypeFull = "full"
	TypeDiff = "diff"
)

// FileInfo describes one file of a snapshot.
type FileInfo struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
	// Algorithm is how SHA256 was computed: AlgorithmSHA256Chunked4M for
	// what Commit writes, empty (AlgorithmSHA256, the whole file's
	// SHA-256) in meta.json files written by older versions.
	Algorithm string `json:"algorithm,omitempty"`
	// SHA256 is the hex digest of Algorithm (always a SHA-256 output).
	SHA256 string `json:"sha256"`
}

// Hardware is the machine the snapshot was taken of.
type Hardware struct {
	VCPUs           int    `json:"vcpus"`
	MemoryMiB       int    `json:"memory_mib"`
	Kernel          string `json:"kernel"`
	Initrd          string `json:"initrd,omitempty"`
	Rootfs          string `json:"rootfs"`
	BootArgs        string `json:"boot_args"`
	TrackDirtyPages bool   `json:"track_dirty_pages"`
}

// Network is the guest's network identity inside the snapshot (what the
// guest remembers; restored copies get their own host side).
type Network struct {
	NICID    string `json:"nic_id,omitempty"`
	TAP      string `json:"tap,omitempty"`
	GuestIP  string `json:"guest_ip,omitempty"`
	GuestMAC string `json:"guest_mac,omitempty"`
}

// Vsock is the guest's vsock device.
type Vsock struct {
	CID     uint32 `json:"cid"`
	UDSPath string `json:"uds_path"`
}

// Meta is meta.json: everything known about a snapshot.
type Meta struct {
	ID                 string              `json:"id"`
	Name               string              `json:"name"`
	SandboxID          string              `json:"sandbox_id"`
	CreatedAt          time.Time           `json:"created_at"`
	Type               string              `json:"type"`
	ParentID           string              `json:"parent_id,omitempty"`
	FirecrackerVersion string              `json:"firecracker_version"`
	SnapshotVersion    string              `json:"snapshot_version"`
	Hardware           Hardware            `json:"hardware"`
	Network            *Network            `json:"network,omitempty"`
	Vsock              *Vsock              `json:"vsock,omitempty"`
	PauseDuration      time.Duration       `json:"pause_ns"`
	Files              map[string]FileInfo `json:"files"`
	// Dir is the snapshot's directory (not stored; filled when loaded).
	Dir string `json:"-"`
}

// SizeBytes returns the total size of the snapshot's files.
func (m Meta) SizeBytes() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

// dataFiles are the files every snapshot holds besides meta.json, in the
// order Commit processes them.
var dataFiles = []string{VMStateName, MemName, DiskName}

// tmpPrefix starts the name of a temporary directory (a snapshot being
// written or being deleted). Open removes such directories.
const tmpPrefix = ".tmp-"

// maxMetaSize bounds the size of a meta.json that Open reads.
const maxMetaSize = 1 << 20

// dirMode is the permission of every directory the catalog creates.
const dirMode = 0o700

// MaxNameLength is the longest acceptable snapshot name.
const MaxNameLength = 64

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

// loadSnapshot reads and checks the snapshot in dir.
func loadSnapshot(sandboxID, id, dir string) (Meta, error) {
	f, err := os.OpenFile(filepath.Join(dir, MetaName), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return Meta{}, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return Meta{}, err
	} else if !st.Mode().IsRegular() {
		return Meta{}, fmt.Errorf("%s is not a regular file", MetaName)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxMetaSize+1))
	if err != nil {
		return Meta{}, fmt.Errorf("read %s: %w", MetaName, err)
	}
	if len(data) > maxMetaSize {
		return Meta{}, fmt.Errorf("%s is larger than %d bytes", MetaName, maxMetaSize)
	}
	var m Meta
	if err := json.Unmarshal(data, &m); err != nil {
		return Meta{}, fmt.Errorf("parse %s: %w", MetaName, err)
	}
	switch {
	case m.ID != id:
		return Meta{}, fmt.Errorf("%s has id %q, directory is %q", MetaName, m.ID, id)
	case m.SandboxID != sandboxID:
		return Meta{}, fmt.Errorf("%s has sandbox id %q, directory is %q", MetaName, m.SandboxID, sandboxID)
	case m.Type != TypeFull && m.Type != TypeDiff:
		return Meta{}, fmt.Errorf("%s has unknown type %q", MetaName, m.Type)
	case m.ParentID != "" && !ids.Valid(m.ParentID):
		return Meta{}, fmt.Errorf("%s has invalid parent id %q", MetaName, m.ParentID)
	}
	if err := ValidName(m.Name); err != nil {
		return Meta{}, fmt.Errorf("%s: %w", MetaName, err)
	}
	for _, name := range dataFiles {
		if _, ok := m.Files[name]; !ok {
			return Meta{}, fmt.Errorf("%s does not list file %s", MetaName, name)
		}
	}
	for key, fi := range m.Files {
		if key != fi.Name || ValidName(key) != nil || key == MetaName {
			return Meta{}, fmt.Errorf("%s lists an invalid file entry %q", MetaName, key)
		}
		if !knownAlgorithm(fi.Algorithm) {
			return Meta{}, fmt.Errorf("%s has an unknown checksum algorithm %s for %s", MetaName,
				strconv.QuoteToASCII(fi.Algorithm), key)
		}
		if b, err := hex.DecodeString(fi.SHA256); err != nil || len(b) != 32 {
			return Meta{}, fmt.Errorf("%s has an invalid sha256 for %s", MetaName, key)
		}
		if err := VerifyFile(filepath.Join(dir, key), fi, false); err != nil {
			return Meta{}, err
		}
	}
	m.Dir = dir
	return m, nil
}

// Dir returns the catalog's directory (absolute).
func (c *Catalog) Dir() string { return c.dir }

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

// ValidName reports whether name is an acceptable snapshot name: 1 to 64
// characters of [A-Za-z0-9._-], not starting with '.' or '-' (which also
// excludes "." and ".."). Otherwise the error is errdefs.ErrInvalidArgument.
func ValidName(name string) error {
	bad := func(why string) error {
		return fmt.Errorf("invalid snapshot name %s: %s: %w", strconv.QuoteToASCII(name), why, errdefs.ErrInvalidArgument)
	}
	switch {
	case name == "":
		return bad("empty")
	case len(name) > MaxNameLength:
		return bad(fmt.Sprintf("longer than %d characters", MaxNameLength))
	case name == "." || name == "..":
		return bad("not a name")
	case name[0] == '.' || name[0] == '-':
		return bad("must not start with '.' or '-'")
	}
	for i := range len(name) {
		switch ch := name[i]; {
		case 'a' <= ch && ch <= 'z', 'A' <= ch && ch <= 'Z', '0' <= ch && ch <= '9', ch == '.', ch == '_', ch == '-':
		default:
			return bad("only letters, digits, '.', '_' and '-' are allowed")
		}
	}
	return nil
}

// cloneMeta returns a deep copy of m, so callers cannot change the
// catalog's copy.
func cloneMeta(m Meta) Meta {
	m.Files = maps.Clone(m.Files)
	if m.Network != nil {
		n := *m.Network
		m.Network = &n
	}
	if m.Vsock != nil {
		v := *m.Vsock
		m.Vsock = &v
	}
	return m
}

// classify marks a full file system (or quota) as
// errdefs.ErrResourceExhausted; the message keeps "no space left on
// device".
func classify(err error) error {
	if err == nil || errors.Is(err, errdefs.ErrResourceExhausted) {
		return err
	}
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return fmt.Errorf("%w: %w", err, errdefs.ErrResourceExhausted)
	}
	return err
}
