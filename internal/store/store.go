package store

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// FileName is the name of the database file inside the data directory.
const FileName = "state.db"

// Path returns the database file of a data directory.
func Path(dataDir string) string { return filepath.Join(dataDir, FileName) }

// Defaults for Options.
const (
	// DefaultOpenTimeout bounds the wait for bbolt's own file lock.
	DefaultOpenTimeout = time.Second
	// DefaultEventHistory is how many recent events are kept.
	DefaultEventHistory = 4096
)

// The schema. See the package comment for the drawing.
const (
	schemaBucket  = "v1"
	schemaVersion = 3
)

var (
	keyVersion  = []byte("version")
	keyEventSeq = []byte("event_seq")
	keyCleanEnd = []byte("clean_end") // optional: the last run ended with EndRun
	// optional: the highest event sequence trimmed from the history
	keyEventsTrimmed = []byte("events_trimmed")
	// optional: how many events the history holds
	keyEventCount = []byte("event_count")
	bktSandboxes  = []byte("sandboxes")
	bktEvents     = []byte("events")
)

// buckets lists the buckets inside v1 of the current schema.
func buckets() [][]byte { return [][]byte{bktSandboxes, bktEvents} }

// ErrLocked is returned (wrapped) when another process holds the data
// directory's lock or the database file.
var ErrLocked = errors.New("state is locked by another process")

// ErrCorrupt is returned (wrapped) when the database file cannot be opened
// as a bbolt file, fails its consistency check, or has an unexpected shape.
var ErrCorrupt = errors.New("state store is corrupt or unreadable")

// ErrNewerSchema is returned (wrapped) when the database was written by a
// newer version of the daemon.
var ErrNewerSchema = errors.New("state store has a newer schema")

// Options tune Open. The zero value takes the defaults.
type Options struct {
	// OpenTimeout bounds the wait for the database file's lock
	// (DefaultOpenTimeout when zero).
	OpenTimeout time.Duration
	// EventHistory is how many of the most recent events are kept
	// (DefaultEventHistory when zero; must not be negative).
	EventHistory int
}

// Store is the durable state. It is safe for concurrent use; bbolt
// serializes writers.
type Store struct {
	db      *bolt.DB
	path    string
	history uint64

	// writes feeds the committer goroutine, which runs every write
	// queued meanwhile in one transaction (group commit: one fsync for
	// many writers under load, no added delay when idle). committed is
	// closed when it has returned.
	writes    chan *write
	committed chan struct{}
	// wmu guards closed and sending on writes.
	wmu    sync.Mutex
	closed bool
}

// write is one caller's change, run inside a write transaction. fn must
// be safe to run again in a new transaction: when another write of the
// same batch fails, the rest are retried without it.
type write struct {
	fn   func(root *bolt.Bucket) error
	done chan error
}

// maxBatch bounds the writes committed in one transaction.
const maxBatch = 256

// ErrClosed is returned by writes after Close.
var ErrClosed = errors.New("state store is closed")

// Open opens (or, if absent, creates with mode 0600) the bbolt database at
// path, normally Path(dataDir); the directory must exist. An existing file
// is never wiped or recreated: if it cannot be opened, fails the
// consistency check or has an unknown or newer schema, Open returns an
// error naming the file and leaves the file as it was.
func Open(path string, opts Options) (*Store, error) {
	if opts.OpenTimeout == 0 {
		opts.OpenTimeout = DefaultOpenTimeout
	}
	if opts.EventHistory == 0 {
		opts.EventHistory = DefaultEventHistory
	}
	if opts.EventHistory < 0 || opts.OpenTimeout < 0 {
		return nil, fmt.Errorf("open state store %s: negative option (event history %d, timeout %s)",
			path, opts.EventHistory, opts.OpenTimeout)
	}
	info, statErr := os.Stat(path)
	created := errors.Is(statErr, os.ErrNotExist)
	if statErr == nil && info.Size() > 0 {
		// Check an existing file read-only first: bbolt's read-write Open
		// panics on some corrupt pages, and a read-only open touches
		// nothing.
		if err := check(path, opts.OpenTimeout); err != nil {
			return nil, err
		}
	}
	// The freelist is synced on every commit (bbolt's default): with
	// NoFreelistSync, bbolt rebuilds it at open in a goroutine that panics
	// (killing the daemon) on a corrupt page, instead of Open failing.
	db, err := openBolt(path, &bolt.Options{Timeout: opts.OpenTimeout})
	if err != nil {
		return nil, err
	}
	s := &Store{db: db, path: path, history: uint64(opts.EventHistory)}
	if err := s.prepare(); err != nil {
		_ = db.Close()
		return nil, err
	}
	if created {
		// Make the new file's directory entry durable too.
		if err := syncDir(filepath.Dir(path)); err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("open state store %s: %w", path, err)
		}
	}
	s.writes = make(chan *write, maxBatch)
	s.committed = make(chan struct{})
	go s.commitLoop()
	return s, nil
}

// openBolt opens the bbolt file, turning a panic inside bbolt (corrupt
// pages) into an error and closing the file it had opened, which also
// drops bbolt's flock.
func openBolt(path string, bopts *bolt.Options) (db *bolt.DB, err error) {
	var f *os.File
	bopts.OpenFile = func(name string, flag int, mode os.FileMode) (*os.File, error) {
		var err error
		f, err = os.OpenFile(name, flag, mode)
		return f, err
	}
	defer func() {
		if r := recover(); r != nil {
			if f != nil {
				_ = f.Close()
			}
			db, err = nil, corruptErr(path, fmt.Errorf("bbolt: %v", r))
		}
	}()
	db, err = bolt.Open(path, 0o600, bopts)
	if err != nil {
		switch {
		case errors.Is(err, berrors.ErrTimeout):
			return nil, fmt.Errorf("open state store %s: %w (is another vmm-daemon running?): %w", path, ErrLocked, err)
		case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrVersionMismatch),
			errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrInvalidMapping):
			return nil, corruptErr(path, err)
		default:
			return nil, fmt.Errorf("open state store %s: %w", path, err)
		}
	}
	return db, nil
}

// check opens an existing file read-only and runs bbolt's consistency
// check and the schema checks on it.
func check(path string, timeout time.Duration) error {
	db, err := openBolt(path, &bolt.Options{Timeout: timeout, ReadOnly: true})
	if err != nil {
		return err
	}
	err = db.View(func(tx *bolt.Tx) error {
		var problems []error
		for cerr := range tx.Check() {
			problems = append(problems, cerr)
		}
		if len(problems) > 0 {
			return corruptErr(path, errors.Join(problems...))
		}
		_, err := schemaOf(path, tx)
		return err
	})
	return errors.Join(err, db.Close())
}

// corruptErr builds the error for a file that cannot be used.
func corruptErr(path string, err error) error {
	return fmt.Errorf("open state store %s: %w (the file was left untouched; "+
		"restore it from a backup or move it aside to start empty): %w", path, ErrCorrupt, err)
}

// prepare checks the file's consistency and schema, then initialises an
// empty database or migrates an older one.
func (s *Store) prepare() error {
	var (
		empty   bool
		version int
	)
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		version, err = schemaOf(s.path, tx)
		empty = version == 0
		return err
	})
	if err != nil {
		return err
	}
	if empty {
		err = s.db.Update(func(tx *bolt.Tx) error {
			root, err := tx.CreateBucket([]byte(schemaBucket))
			if err != nil {
				return err
			}
			if err := root.Put(keyVersion, u64(schemaVersion)); err != nil {
				return err
			}
			if err := root.Put(keyEventSeq, u64(0)); err != nil {
				return err
			}
			// A new store has no run that could have lost events.
			if err := root.Put(keyCleanEnd, []byte{1}); err != nil {
				return err
			}
			if err := root.Put(keyEventsTrimmed, u64(0)); err != nil {
				return err
			}
			for _, name := range buckets() {
				if _, err := root.CreateBucket(name); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("initialise state store %s: %w", s.path, err)
		}
		return nil
	}
	if version < schemaVersion {
		err = s.db.Update(func(tx *bolt.Tx) error {
			for _, m := range migrations() {
				if m.version <= version {
					continue
				}
				if err := m.migrate(tx); err != nil {
					return fmt.Errorf("migrate to version %d: %w", m.version, err)
				}
			}
			return tx.Bucket([]byte(schemaBucket)).Put(keyVersion, u64(schemaVersion))
		})
		if err != nil {
			return fmt.Errorf("upgrade state store %s from version %d: %w", s.path, version, err)
		}
	}
	// The shape must be complete after init or migration.
	return s.db.View(func(tx *bolt.Tx) error {
		root := tx.Bucket([]byte(schemaBucket))
		for _, name := range buckets() {
			if root.Bucket(name) == nil {
				return corruptErr(s.path, fmt.Errorf("bucket %s/%s is missing", schemaBucket, name))
			}
		}
		if len(root.Get(keyEventSeq)) != 8 {
			return corruptErr(s.path, fmt.Errorf("key %s/%s is missing", schemaBucket, keyEventSeq))
		}
		return nil
	})
}

// schemaOf returns the schema version of the database (0 when empty), or
// an error when it is newer than this binary or malformed.
func schemaOf(path string, tx *bolt.Tx) (int, error) {
	var unknown []string
	if err := tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
		if string(name) != schemaBucket {
			unknown = append(unknown, string(name))
		}
		return nil
	}); err != nil {
		return 0, corruptErr(path, err)
	}
	if len(unknown) > 0 {
		return 0, fmt.Errorf("open state store %s: %w: unknown top-level buckets %q "+
			"(written by a newer vmm-daemon?); refusing to use it", path, ErrNewerSchema, unknown)
	}
	root := tx.Bucket([]byte(schemaBucket))
	if root == nil {
		return 0, nil
	}
	v := root.Get(keyVersion)
	if len(v) != 8 || binary.BigEndian.Uint64(v) == 0 {
		return 0, corruptErr(path, fmt.Errorf("bucket %s has no valid version key", schemaBucket))
	}
	version := binary.BigEndian.Uint64(v)
	if version > schemaVersion {
		return 0, fmt.Errorf("open state store %s: %w: version %d, this vmm-daemon knows up to %d; "+
			"refusing to use it", path, ErrNewerSchema, version, schemaVersion)
	}
	return int(version), nil
}

// Close commits the writes already queued, stops the committer and closes
// the database. Writes after Close fail with ErrClosed.
func (s *Store) Close() error {
	s.wmu.Lock()
	if !s.closed {
		s.closed = true
		close(s.writes)
	}
	s.wmu.Unlock()
	<-s.committed
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close state store %s: %w", s.path, err)
	}
	return nil
}

// Path returns the database file's path.
func (s *Store) Path() string { return s.path }

// view runs fn in a read transaction on the v1 bucket, after checking ctx.
func (s *Store) view(ctx context.Context, fn func(root *bolt.Bucket) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(func(tx *bolt.Tx) error { return fn(tx.Bucket([]byte(schemaBucket))) })
}

// update runs fn in a write transaction on the v1 bucket, after checking
// ctx, and returns once the transaction is committed and fsynced (or fn
// failed). Writes queued while another commits share the next transaction.
// A queued write cannot be withdrawn, so ctx is only checked before it is
// queued.
func (s *Store) update(ctx context.Context, fn func(root *bolt.Bucket) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w := &write{fn: fn, done: make(chan error, 1)}
	s.wmu.Lock()
	if s.closed {
		s.wmu.Unlock()
		return ErrClosed
	}
	s.writes <- w
	s.wmu.Unlock()
	return <-w.done
}

// commitLoop is the committer goroutine: it takes the next write and every
// write queued behind it and commits them together, until Close.
func (s *Store) commitLoop() {
	defer close(s.committed)
	for w := range s.writes {
		batch := []*write{w}
	more:
		for len(batch) < maxBatch {
			select {
			case w, ok := <-s.writes:
				if !ok {
					break more
				}
				batch = append(batch, w)
			default:
				break more
			}
		}
		s.commit(batch)
	}
}

// commit runs batch in one transaction. A write whose fn fails gets its
// error and the others are retried without it; a failed commit fails them
// all.
func (s *Store) commit(batch []*write) {
	for len(batch) > 0 {
		failed, ferr := -1, error(nil)
		err := s.db.Update(func(tx *bolt.Tx) error {
			root := tx.Bucket([]byte(schemaBucket))
			for i, w := range batch {
				if err := w.fn(root); err != nil {
					failed, ferr = i, err
					return err
				}
			}
			return nil
		})
		if failed >= 0 {
			batch[failed].done <- ferr
			batch = slices.Delete(batch, failed, failed+1)
			continue
		}
		for _, w := range batch {
			w.done <- err
		}
		return
	}
}

// listAll decodes every value of bucket bkt (JSON records of type T), in
// key order; what names the records in errors.
func listAll[T any](ctx context.Context, s *Store, bkt []byte, what string) ([]T, error) {
	var out []T
	err := s.view(ctx, func(root *bolt.Bucket) error {
		return root.Bucket(bkt).ForEach(func(k, v []byte) error {
			var rec T
			if err := decode(v, &rec); err != nil {
				return fmt.Errorf("%s %q: %w", what, k, err)
			}
			out = append(out, rec)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list %ss: %w", what, err)
	}
	return out, nil
}

// putJSON stores rec as JSON under key id in bucket bkt; what names the
// record in errors.
func putJSON(ctx context.Context, s *Store, bkt []byte, what, id string, rec any) error {
	if err := validKey(what+" id", id); err != nil {
		return err
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode %s %q: %w", what, id, err)
	}
	err = s.update(ctx, func(root *bolt.Bucket) error { return root.Bucket(bkt).Put([]byte(id), data) })
	if err != nil {
		return fmt.Errorf("put %s %q: %w", what, id, err)
	}
	return nil
}

// u64 encodes v as 8 big-endian bytes.
func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// decodeU64 decodes 8 big-endian bytes (0 for anything else).
func decodeU64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// syncDir fsyncs a directory.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}
