package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	bolt "go.etcd.io/bbolt"
)

// openStore opens a store in dir (a new temp dir when empty) and closes it
// at the end of the test.
func openStore(t *testing.T, dir string, opts Options) *Store {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	s, err := Open(Path(dir), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func fullRecord(id string) SandboxRecord {
	at := time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC)
	return SandboxRecord{
		ID:     id,
		Labels: map[string]string{"team": "a", "env": "test"},
		State:  "running",
		Hardware: HardwareRecord{VCPUs: 2, MemoryMiB: 256, Kernel: "/k/vmlinux", Initrd: "/k/initrd",
			Rootfs: "/r/rootfs.ext4", Disk: "/d/" + id + "/disk.ext4", BootArgs: "console=ttyS0", TrackDirtyPages: true},
		Network: NetworkRecord{TAP: "tap0", MAC: "06:00:0a:00:00:02", IP: "10.0.0.2", Gateway: "10.0.0.1",
			DNS: []string{"1.1.1.1", "8.8.8.8"}, Netns: "vmm-" + id, GuestIP: "10.0.0.2", PrefixLen: 30},
		Process: ProcessRecord{PID: 4242, PIDStartTime: 987654,
			APISocket: "/run/fc.sock", LogPath: "/d/fc.log", MetricsPath: "/d/fc.metrics", ConsolePath: "/d/console",
			VsockPath: "/d/vsock", Jailed: true,
			Chroot: "/srv/jailer/firecracker/" + id + "/root", UID: 1234, GID: 1234,
			Cgroup: "/sys/fs/cgroup/firecracker/" + id},
		Dir:            "/data/sandboxes/" + id,
		CreatedAt:      at,
		ReadyAt:        at.Add(time.Second),
		StoppedAt:      at.Add(time.Minute),
		TTL:            time.Hour,
		ExpiresAt:      at.Add(time.Hour),
		FailureReason:  "vmm exited with status 1",
		RestoredFrom:   "snap-1",
		LastPause:      12 * time.Millisecond,
		LastSnapshotID: "snap-2",
	}
}

func TestSandboxRoundTrip(t *testing.T) {
	ctx := t.Context()
	s := openStore(t, "", Options{})
	tests := []struct {
		name string
		rec  SandboxRecord
	}{
		{"full", fullRecord("sb-full")},
		{"minimal", SandboxRecord{ID: "sb-min", State: "starting"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.PutSandbox(ctx, tt.rec); err != nil {
				t.Fatalf("PutSandbox: %v", err)
			}
			got, err := s.GetSandbox(ctx, tt.rec.ID)
			if err != nil {
				t.Fatalf("GetSandbox: %v", err)
			}
			if !reflect.DeepEqual(got, tt.rec) {
				t.Fatalf("GetSandbox =\n%+v\nwant\n%+v", got, tt.rec)
			}
		})
	}

	// Replace.
	upd := fullRecord("sb-full")
	upd.State = "stopped"
	upd.Process = ProcessRecord{}
	if err := s.PutSandbox(ctx, upd); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetSandbox(ctx, "sb-full"); err != nil || !reflect.DeepEqual(got, upd) {
		t.Fatalf("after replace: %+v, %v", got, err)
	}

	list, err := s.ListSandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != "sb-full" || list[1].ID != "sb-min" {
		t.Fatalf("ListSandboxes = %+v", list)
	}

	if err := s.DeleteSandbox(ctx, "sb-min"); err != nil {
		t.Fatalf("DeleteSandbox: %v", err)
	}
	if _, err := s.GetSandbox(ctx, "sb-min"); !errdefs.IsNotFound(err) {
		t.Fatalf("GetSandbox after delete: %v, want not found", err)
	}
}

func TestSandboxErrors(t *testing.T) {
	ctx := t.Context()
	s := openStore(t, "", Options{})
	tests := []struct {
		name string
		op   func() error
		is   error
	}{
		{"get missing", func() error { _, err := s.GetSandbox(ctx, "nope"); return err }, errdefs.ErrNotFound},
		{"delete missing", func() error { return s.DeleteSandbox(ctx, "nope") }, errdefs.ErrNotFound},
		{"put empty id", func() error { return s.PutSandbox(ctx, SandboxRecord{}) }, errdefs.ErrInvalidArgument},
		{"put huge id", func() error {
			return s.PutSandbox(ctx, SandboxRecord{ID: strings.Repeat("x", bolt.MaxKeySize+1)})
		}, errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.op(); !errors.Is(err, tt.is) {
				t.Fatalf("err = %v, want %v", err, tt.is)
			}
		})
	}
}

func TestCanceledContext(t *testing.T) {
	s := openStore(t, "", Options{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.PutSandbox(ctx, SandboxRecord{ID: "a"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("PutSandbox = %v, want canceled", err)
	}
	if _, err := s.ListSandboxes(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("ListSandboxes = %v, want canceled", err)
	}
}

func TestEventsHistory(t *testing.T) {
	ctx := t.Context()
	s := openStore(t, "", Options{EventHistory: 5})
	if seq, err := s.LastEventSeq(ctx); err != nil || seq != 0 {
		t.Fatalf("LastEventSeq on empty = %d, %v", seq, err)
	}
	if evs, ok, err := s.EventsSince(ctx, 0); err != nil || !ok || len(evs) != 0 {
		t.Fatalf("EventsSince(0) on empty = %v, %v, %v", evs, ok, err)
	}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 1; i <= 12; i++ {
		ev := EventRecord{SandboxID: "sb", Action: "created", State: "starting", Time: at.Add(time.Duration(i) * time.Second),
			Attributes: map[string]string{"i": string(rune('a' + i))}}
		if i == 3 {
			ev.Seq = 3 // an explicit, correct sequence is accepted
		}
		got, err := s.AppendEvent(ctx, ev)
		if err != nil {
			t.Fatalf("AppendEvent %d: %v", i, err)
		}
		ev.Seq = uint64(i)
		if !reflect.DeepEqual(got, ev) {
			t.Fatalf("AppendEvent %d = %+v, want %+v", i, got, ev)
		}
	}
	if _, err := s.AppendEvent(ctx, EventRecord{Seq: 12}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("AppendEvent with a used seq = %v, want invalid argument", err)
	}
	if seq, err := s.LastEventSeq(ctx); err != nil || seq != 12 {
		t.Fatalf("LastEventSeq = %d, %v; want 12", seq, err)
	}
	// Retained: 8..12.
	tests := []struct {
		since  uint64
		wantOK bool
		first  uint64 // 0: no events
		n      int
	}{
		{0, false, 8, 5},
		{6, false, 8, 5},
		{7, true, 8, 5},
		{9, true, 10, 3},
		{11, true, 12, 1},
		{12, true, 0, 0},
		{100, true, 0, 0},
	}
	for _, tt := range tests {
		evs, ok, err := s.EventsSince(ctx, tt.since)
		if err != nil {
			t.Fatal(err)
		}
		if ok != tt.wantOK || len(evs) != tt.n {
			t.Fatalf("EventsSince(%d) = %d events, ok %v; want %d, %v", tt.since, len(evs), ok, tt.n, tt.wantOK)
		}
		for i, ev := range evs {
			if ev.Seq != tt.first+uint64(i) {
				t.Fatalf("EventsSince(%d)[%d].Seq = %d, want %d", tt.since, i, ev.Seq, tt.first+uint64(i))
			}
		}
	}
}

func TestEventsConcurrentAppend(t *testing.T) {
	ctx := t.Context()
	s := openStore(t, "", Options{EventHistory: 1000})
	const workers, each = 4, 10
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for range each {
				if _, err := s.AppendEvent(ctx, EventRecord{SandboxID: string(rune('a' + w)), Action: "x"}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	evs, ok, err := s.EventsSince(ctx, 0)
	if err != nil || !ok || len(evs) != workers*each {
		t.Fatalf("EventsSince(0) = %d events, %v, %v", len(evs), ok, err)
	}
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("event %d has seq %d", i, ev.Seq)
		}
	}
}

func TestPersistence(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s, err := Open(Path(dir), Options{EventHistory: 10})
	if err != nil {
		t.Fatal(err)
	}
	var recs []SandboxRecord
	for _, id := range []string{"sb-1", "sb-2", "sb-3"} {
		r := fullRecord(id)
		recs = append(recs, r)
		if err := s.PutSandbox(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	for range 15 {
		if _, err := s.AppendEvent(ctx, EventRecord{SandboxID: "sb-1", Action: "ready"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(Path(dir))
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Fatalf("state.db mode = %o, want 600", perm)
	}

	// Reopen with a smaller history: everything is there; the next append trims.
	s = openStore(t, dir, Options{EventHistory: 3})
	gotRecs, err := s.ListSandboxes(ctx)
	if err != nil || !reflect.DeepEqual(gotRecs, recs) {
		t.Fatalf("ListSandboxes after reopen = %+v, %v", gotRecs, err)
	}
	if seq, err := s.LastEventSeq(ctx); err != nil || seq != 15 {
		t.Fatalf("LastEventSeq after reopen = %d, %v", seq, err)
	}
	if evs, ok, err := s.EventsSince(ctx, 5); err != nil || !ok || len(evs) != 10 || evs[0].Seq != 6 {
		t.Fatalf("EventsSince(5) after reopen = %d events, %v, %v", len(evs), ok, err)
	}
	if ev, err := s.AppendEvent(ctx, EventRecord{SandboxID: "sb-1", Action: "stopped"}); err != nil || ev.Seq != 16 {
		t.Fatalf("AppendEvent after reopen = %+v, %v", ev, err)
	}
	if evs, ok, err := s.EventsSince(ctx, 0); err != nil || ok || len(evs) != 3 || evs[0].Seq != 14 {
		t.Fatalf("EventsSince(0) after trim = %d events, ok %v, %v", len(evs), ok, err)
	}
}

// assertOpenFails opens path, expects an error wrapping want and naming the
// file, and checks the file's bytes did not change.
func assertOpenFails(t *testing.T, path string, want error) {
	t.Helper()
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, Options{OpenTimeout: 200 * time.Millisecond})
	if err == nil {
		_ = s.Close()
		t.Fatal("Open succeeded")
	}
	if !errors.Is(err, want) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Open error = %q, want %v naming %s", err, want, path)
	}
	t.Logf("Open error: %v", err)
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("Open modified the file")
	}
}

func TestOpenCorrupt(t *testing.T) {
	random := make([]byte, 64<<10)
	if _, err := rand.Read(random); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		content []byte
	}{
		{"short text", []byte("this is not a bbolt file\n")},
		{"random 64KiB", random},
		{"zeros 16KiB", make([]byte, 16<<10)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := Path(t.TempDir())
			if err := os.WriteFile(path, tt.content, 0o600); err != nil {
				t.Fatal(err)
			}
			assertOpenFails(t, path, ErrCorrupt)
		})
	}
}

func TestOpenCorruptPages(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s, err := Open(Path(dir), Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		r := fullRecord("sb-" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + string(rune('a'+i/26)))
		if err := s.PutSandbox(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Keep the two meta pages (so bbolt itself opens the file) and
	// scribble over every data page.
	path := Path(dir)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pageSize := os.Getpagesize()
	for i := 2 * pageSize; i < len(data); i++ {
		data[i] = 0xA5
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	assertOpenFails(t, path, ErrCorrupt)
}

func TestOpenSchema(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(tx *bolt.Tx) error
		want   error
	}{
		{"newer version", func(tx *bolt.Tx) error {
			return tx.Bucket([]byte(schemaBucket)).Put(keyVersion, u64(schemaVersion+1))
		}, ErrNewerSchema},
		{"unknown top-level bucket", func(tx *bolt.Tx) error {
			_, err := tx.CreateBucket([]byte("v2"))
			return err
		}, ErrNewerSchema},
		{"missing version", func(tx *bolt.Tx) error {
			return tx.Bucket([]byte(schemaBucket)).Delete(keyVersion)
		}, ErrCorrupt},
		{"missing sandboxes bucket", func(tx *bolt.Tx) error {
			return tx.Bucket([]byte(schemaBucket)).DeleteBucket(bktSandboxes)
		}, ErrCorrupt},
		{"missing events bucket", func(tx *bolt.Tx) error {
			return tx.Bucket([]byte(schemaBucket)).DeleteBucket(bktEvents)
		}, ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := Path(t.TempDir())
			s, err := Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(tt.mutate); err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			assertOpenFails(t, path, tt.want)
		})
	}
}

func TestOpenErrors(t *testing.T) {
	t.Run("held by another open", func(t *testing.T) {
		dir := t.TempDir()
		openStore(t, dir, Options{})
		start := time.Now()
		_, err := Open(Path(dir), Options{OpenTimeout: 100 * time.Millisecond})
		if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), Path(dir)) {
			t.Fatalf("second Open = %v, want ErrLocked naming the file", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("second Open took %s", d)
		}
	})
	t.Run("missing dir", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "nope", FileName)
		if _, err := Open(path, Options{}); err == nil || !strings.Contains(err.Error(), path) {
			t.Fatalf("Open = %v, want an error naming %s", err, path)
		}
		if _, err := os.Stat(filepath.Dir(path)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Open created the directory: %v", err)
		}
	})
	t.Run("negative history", func(t *testing.T) {
		if _, err := Open(Path(t.TempDir()), Options{EventHistory: -1}); err == nil {
			t.Fatal("Open accepted a negative history")
		}
	})
}

func TestBadRecord(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s := openStore(t, dir, Options{})
	if err := s.PutSandbox(ctx, SandboxRecord{ID: "ok"}); err != nil {
		t.Fatal(err)
	}
	// Write a value that is not JSON straight through bbolt.
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(schemaBucket)).Bucket(bktSandboxes).Put([]byte("bad"), []byte("{not json"))
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetSandbox(ctx, "bad"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("GetSandbox(bad) = %v, want ErrCorrupt", err)
	}
	if _, err := s.ListSandboxes(ctx); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("ListSandboxes = %v, want ErrCorrupt", err)
	}
	if _, err := s.GetSandbox(ctx, "ok"); err != nil {
		t.Fatal(err)
	}
}

func TestAppendEventsBatch(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "state.db"), Options{EventHistory: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	batch := []EventRecord{{Seq: 1, Action: "a"}, {Seq: 2, Action: "b"}, {Seq: 3, Action: "c"}, {Seq: 4, Action: "d"}}
	if err := s.AppendEvents(ctx, batch); err != nil {
		t.Fatal(err)
	}
	if seq, err := s.LastEventSeq(ctx); err != nil || seq != 4 {
		t.Fatalf("LastEventSeq = %d, %v", seq, err)
	}
	evs, ok, err := s.EventsSince(ctx, 1)
	if err != nil || !ok || len(evs) != 3 || evs[0].Action != "b" {
		t.Fatalf("EventsSince(1) = %v %v %v", evs, ok, err)
	}
	// A sequence that goes back in a batch rolls the whole batch back.
	if err := s.AppendEvents(ctx, []EventRecord{{Seq: 5}, {Seq: 5}}); err == nil {
		t.Fatal("a batch reusing a sequence was accepted")
	}
	if seq, _ := s.LastEventSeq(ctx); seq != 4 {
		t.Fatalf("a failed batch left seq %d", seq)
	}
}

// CreateSandbox writes a record for a new id only; an existing record is
// left as it was.
func TestCreateSandbox(t *testing.T) {
	ctx := t.Context()
	s := openStore(t, "", Options{})
	first := fullRecord("sb-a")
	if err := s.CreateSandbox(ctx, first); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		rec  SandboxRecord
		is   error
	}{
		{"new id", SandboxRecord{ID: "sb-b", State: "starting"}, nil},
		{"existing id", SandboxRecord{ID: "sb-a", State: "starting"}, errdefs.ErrAlreadyExists},
		{"empty id", SandboxRecord{State: "starting"}, errdefs.ErrInvalidArgument},
		{"huge id", SandboxRecord{ID: strings.Repeat("x", bolt.MaxKeySize+1)}, errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.CreateSandbox(ctx, tt.rec)
			if (tt.is == nil && err != nil) || !errors.Is(err, tt.is) {
				t.Fatalf("CreateSandbox = %v, want %v", err, tt.is)
			}
		})
	}
	if got, err := s.GetSandbox(ctx, "sb-a"); err != nil || !reflect.DeepEqual(got, first) {
		t.Fatalf("the refused create changed the record: %+v, %v", got, err)
	}
	if got, err := s.GetSandbox(ctx, "sb-b"); err != nil || got.State != "starting" {
		t.Fatalf("created record: %+v, %v", got, err)
	}
}

// Concurrent writes share transactions; one that fails does not take the
// others of its batch with it, and writes after Close fail cleanly.
func TestGroupCommitIsolatesFailures(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s := openStore(t, dir, Options{})
	const n = 64
	id := func(i int) string { return fmt.Sprintf("sb-%02d", i) }
	refused := func(i int) bool { return i%8 == 0 }
	for i := range n {
		if refused(i) {
			if err := s.PutSandbox(ctx, SandboxRecord{ID: id(i), State: "ready"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = s.CreateSandbox(ctx, SandboxRecord{ID: id(i), State: "starting"}) })
	}
	wg.Wait()
	for i, err := range errs {
		if refused(i) != errors.Is(err, errdefs.ErrAlreadyExists) || (!refused(i) && err != nil) {
			t.Errorf("write %d: %v (refused %v)", i, err, refused(i))
		}
	}
	check := func(s *Store) {
		t.Helper()
		recs, err := s.ListSandboxes(ctx)
		if err != nil || len(recs) != n {
			t.Fatalf("%d records, %v; want %d", len(recs), err, n)
		}
		for i, r := range recs {
			if want := map[bool]string{true: "ready", false: "starting"}[refused(i)]; r.ID != id(i) || r.State != want {
				t.Errorf("record %d = %s %s, want %s %s", i, r.ID, r.State, id(i), want)
			}
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSandbox(ctx, SandboxRecord{ID: "late"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after Close = %v, want ErrClosed", err)
	}
	// Everything acknowledged is on disk.
	check(openStore(t, dir, Options{}))
}

// Sequence numbers may skip (an event published but never written) and be
// advanced (after a crash), never go back; BeginRun/EndRun tell a clean end
// from a crash.
func TestEventSeqGapsAndRuns(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s := openStore(t, dir, Options{EventHistory: 4})
	if clean, err := s.BeginRun(ctx); err != nil || !clean {
		t.Fatalf("BeginRun on a new store = %v, %v; want clean", clean, err)
	}
	// A run whose events were never written, then a sequence advanced
	// past them: nothing was trimmed, so a replay is complete (and empty).
	other := openStore(t, "", Options{})
	if err := other.AdvanceEventSeq(ctx, 50); err != nil {
		t.Fatal(err)
	}
	if evs, ok, err := other.EventsSince(ctx, 4); err != nil || !ok || len(evs) != 0 {
		t.Fatalf("EventsSince(4) with nothing written = %+v, %v, %v; want none, ok", evs, ok, err)
	}
	for _, seq := range []uint64{1, 2, 5} {
		if _, err := s.AppendEvent(ctx, EventRecord{Seq: seq, Action: "a"}); err != nil {
			t.Fatalf("AppendEvent(%d): %v", seq, err)
		}
	}
	if err := s.AdvanceEventSeq(ctx, 100); err != nil {
		t.Fatal(err)
	}
	if err := s.AdvanceEventSeq(ctx, 50); err != nil { // never lowers it
		t.Fatal(err)
	}
	if ev, err := s.AppendEvent(ctx, EventRecord{Action: "b"}); err != nil || ev.Seq != 101 {
		t.Fatalf("AppendEvent after advancing = %+v, %v; want seq 101", ev, err)
	}
	if _, err := s.AppendEvent(ctx, EventRecord{Action: "c"}); err != nil { // 102: five events, 1 trimmed
		t.Fatal(err)
	}
	// The history keeps the last 4 events, however far apart their numbers.
	evs, ok, err := s.EventsSince(ctx, 0)
	if err != nil || ok || len(evs) != 4 || evs[0].Seq != 2 || evs[3].Seq != 102 {
		t.Fatalf("EventsSince(0) = %+v, %v, %v; want 2, 5, 101, 102 and not ok (1 was trimmed)", evs, ok, err)
	}
	if evs, ok, err := s.EventsSince(ctx, 1); err != nil || !ok || len(evs) != 4 {
		t.Fatalf("EventsSince(1) = %+v, %v, %v", evs, ok, err)
	}
	if evs, ok, err := s.EventsSince(ctx, 99); err != nil || !ok || len(evs) != 2 || evs[0].Seq != 101 {
		t.Fatalf("EventsSince(99) = %+v, %v, %v", evs, ok, err)
	}
	if clean, err := s.BeginRun(ctx); err != nil || clean {
		t.Fatalf("BeginRun after a run without EndRun = %v, %v; want unclean", clean, err)
	}
	if err := s.EndRun(ctx); err != nil {
		t.Fatal(err)
	}
	if clean, err := s.BeginRun(ctx); err != nil || !clean {
		t.Fatalf("BeginRun after EndRun = %v, %v; want clean", clean, err)
	}
}
