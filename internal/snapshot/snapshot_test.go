package snapshot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/ids"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// lockedBuffer collects log output from concurrent goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testLogger returns a logger writing into a buffer the test can read.
func testLogger() (*slog.Logger, *lockedBuffer) {
	b := &lockedBuffer{}
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// openCatalog opens a catalog in dir (a fresh temporary one when empty).
func openCatalog(t *testing.T, dir string) (*Catalog, *lockedBuffer) {
	t.Helper()
	if dir == "" {
		dir = filepath.Join(t.TempDir(), "snapshots")
	}
	log, buf := testLogger()
	c, err := Open(dir, log)
	if err != nil {
		t.Fatal(err)
	}
	return c, buf
}

var idGen = ids.NewGenerator(nil)

// content is what writeFiles puts in each file.
type content map[string][]byte

// writeFiles writes the snapshot's files into the pending directory.
func writeFiles(t *testing.T, p *Pending, sizes ...int) content {
	t.Helper()
	if len(sizes) == 0 {
		sizes = []int{1000, 300 << 10, 64 << 10}
	}
	out := content{}
	for i, path := range []string{p.VMStatePath, p.MemPath, p.DiskPath} {
		b := bytes.Repeat([]byte{byte('a' + i)}, sizes[i])
		if len(b) > 0 {
			b[len(b)/2] = 'x'
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(path)] = b
	}
	return out
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func testMeta() Meta {
	return Meta{
		FirecrackerVersion: "Firecracker v1.16.1",
		SnapshotVersion:    "v10.0.0",
		Hardware:           Hardware{VCPUs: 2, MemoryMiB: 256, Kernel: "/k/vmlinux", Rootfs: "/r/rootfs.ext4", BootArgs: "console=ttyS0"},
		Network:            &Network{NICID: "eth0", TAP: "tap0", GuestIP: "10.0.0.2", GuestMAC: "06:00:0a:00:00:02"},
		Vsock:              &Vsock{CID: 3, UDSPath: "vsock.sock"},
		PauseDuration:      42 * time.Millisecond,
	}
}

// snapshotOf begins, writes and commits a snapshot.
func snapshotOf(t *testing.T, c *Catalog, sandboxID, name string) Meta {
	t.Helper()
	p, err := c.Begin(sandboxID, name)
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, p)
	m, err := c.Commit(p, testMeta())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// entries lists the names in dir (nil when dir does not exist).
func entries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"base", true},
		{"v1.2_final-B", true},
		{"0", true},
		{"a..b", true},
		{strings.Repeat("x", 64), true},
		{"", false},
		{strings.Repeat("x", 65), false},
		{".", false},
		{"..", false},
		{"../x", false},
		{"a/b", false},
		{"/abs", false},
		{"a\\b", false},
		{".hidden", false},
		{".tmp-x", false},
		{"-flag", false},
		{"with space", false},
		{"nul\x00byte", false},
		{"ünïcode", false},
		{"snap\u200b", false},
		{"tab\t", false},
		{"a:b", false},
		{"a*", false},
	} {
		t.Run(fmt.Sprintf("%q", tc.name), func(t *testing.T) {
			err := ValidName(tc.name)
			if tc.ok {
				if err != nil {
					t.Fatalf("ValidName(%q) = %v, want nil", tc.name, err)
				}
				return
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ValidName(%q) = %v, want InvalidArgument", tc.name, err)
			}
			if strings.ContainsRune(err.Error(), 0) {
				t.Fatalf("error message contains a NUL: %q", err)
			}
		})
	}
}

func TestBeginRejects(t *testing.T) {
	c, _ := openCatalog(t, "")
	sb := idGen.New()
	for _, tc := range []struct {
		desc, sandbox, name string
	}{
		{"empty sandbox", "", "a"},
		{"path sandbox", "../" + sb[3:], "a"},
		{"upper sandbox", strings.ToUpper(sb), "a"},
		{"traversal name", sb, "../x"},
		{"slash name", sb, "a/b"},
		{"dot", sb, "."},
		{"dotdot", sb, ".."},
		{"empty name", sb, ""},
		{"long name", sb, strings.Repeat("n", 65)},
		{"nul", sb, "a\x00"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			p, err := c.Begin(tc.sandbox, tc.name)
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("Begin(%q, %q) = %v, %v; want InvalidArgument", tc.sandbox, tc.name, p, err)
			}
		})
	}
	if got := entries(t, c.Dir()); len(got) != 0 {
		t.Fatalf("catalog directory holds %v after rejected Begins", got)
	}
}

func TestRoundTrip(t *testing.T) {
	c, _ := openCatalog(t, "")
	sb := idGen.New()
	p, err := c.Begin(sb, "base")
	if err != nil {
		t.Fatal(err)
	}
	wantTmp := filepath.Join(c.Dir(), sb, ".tmp-"+p.ID)
	if p.Dir != wantTmp || !ids.Valid(p.ID) || p.SandboxID != sb || p.Name != "base" {
		t.Fatalf("pending = %+v, want dir %s", p, wantTmp)
	}
	if p.VMStatePath != filepath.Join(wantTmp, VMStateName) || p.MemPath != filepath.Join(wantTmp, MemName) ||
		p.DiskPath != filepath.Join(wantTmp, DiskName) {
		t.Fatalf("pending paths = %+v", p)
	}
	st, err := os.Stat(p.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o700 || !st.IsDir() {
		t.Fatalf("temporary directory mode %v, want drwx------", st.Mode())
	}
	// A pending snapshot is not listed.
	if l := c.List(""); len(l) != 0 {
		t.Fatalf("List with only a pending snapshot = %v", l)
	}
	files := writeFiles(t, p)
	if err := os.WriteFile(filepath.Join(p.Dir, "mem.diff"), []byte("scratch"), 0o600); err != nil {
		t.Fatal(err)
	}
	in := testMeta()
	in.Type = TypeDiff
	in.ParentID = idGen.New()
	in.ID, in.Name, in.SandboxID = "ignored", "ignored", "ignored"
	before := time.Now()
	m, err := c.Commit(p, in)
	if err != nil {
		t.Fatal(err)
	}
	final := filepath.Join(c.Dir(), sb, p.ID)
	if m.ID != p.ID || m.Name != "base" || m.SandboxID != sb || m.Dir != final || m.Type != TypeDiff ||
		m.ParentID != in.ParentID || m.CreatedAt.Before(before.Add(-time.Second)) || m.CreatedAt.Location() != time.UTC {
		t.Fatalf("committed meta = %+v", m)
	}
	if !reflect.DeepEqual(m.Hardware, in.Hardware) || !reflect.DeepEqual(m.Network, in.Network) ||
		!reflect.DeepEqual(m.Vsock, in.Vsock) || m.PauseDuration != in.PauseDuration {
		t.Fatalf("descriptive fields changed: %+v", m)
	}
	var total int64
	for name, b := range files {
		want := FileInfo{Name: name, Size: int64(len(b)), Algorithm: AlgorithmSHA256Chunked4M, SHA256: chunkedSum(b)}
		if m.Files[name] != want {
			t.Errorf("Files[%s] = %+v, want %+v", name, m.Files[name], want)
		}
		total += int64(len(b))
	}
	if len(m.Files) != 3 || m.SizeBytes() != total {
		t.Errorf("Files = %v, SizeBytes = %d, want 3 files and %d", m.Files, m.SizeBytes(), total)
	}
	// On disk: exactly the four files, no temporary directory.
	if got, want := entries(t, filepath.Join(c.Dir(), sb)), []string{p.ID}; !reflect.DeepEqual(got, want) {
		t.Fatalf("sandbox directory = %v, want %v", got, want)
	}
	if got, want := entries(t, final), []string{DiskName, MemName, MetaName, VMStateName}; !reflect.DeepEqual(got, want) {
		t.Fatalf("snapshot directory = %v, want %v", got, want)
	}
	raw, err := os.ReadFile(filepath.Join(final, MetaName))
	if err != nil {
		t.Fatal(err)
	}
	var onDisk Meta
	if err := json.Unmarshal(raw, &onDisk); err != nil {
		t.Fatal(err)
	}
	onDisk.Dir = final
	if !reflect.DeepEqual(onDisk, m) {
		t.Fatalf("meta.json = %+v\nwant %+v", onDisk, m)
	}
	var generic map[string]any
	if err := json.Unmarshal(raw, &generic); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"id", "name", "sandbox_id", "created_at", "type", "parent_id", "firecracker_version",
		"snapshot_version", "hardware", "network", "vsock", "pause_ns", "files"} {
		if _, ok := generic[key]; !ok {
			t.Errorf("meta.json lacks %q: %s", key, raw)
		}
	}
	for name, fi := range generic["files"].(map[string]any) {
		if alg := fi.(map[string]any)["algorithm"]; alg != AlgorithmSHA256Chunked4M {
			t.Errorf("meta.json has algorithm %v for %s, want %s", alg, name, AlgorithmSHA256Chunked4M)
		}
	}
	if _, ok := generic["Dir"]; ok {
		t.Errorf("meta.json records the directory: %s", raw)
	}
	// Get, List and GetByName.
	got, err := c.Get(m.ID)
	if err != nil || !reflect.DeepEqual(got, m) {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	got.Files[MemName] = FileInfo{}
	got.Network.GuestIP = "changed"
	if again, _ := c.Get(m.ID); !reflect.DeepEqual(again, m) {
		t.Fatal("changing a returned Meta changed the catalog")
	}
	if byName, err := c.GetByName(sb, "base"); err != nil || byName.ID != m.ID {
		t.Fatalf("GetByName = %+v, %v", byName, err)
	}
	if _, err := c.GetByName(sb, "other"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("GetByName(other) = %v, want NotFound", err)
	}
	if _, err := c.Get(idGen.New()); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Get(unknown) = %v, want NotFound", err)
	}
	for _, fi := range m.Files {
		if err := VerifyFile(filepath.Join(final, fi.Name), fi, true); err != nil {
			t.Fatal(err)
		}
	}
	// Commit consumed the pending snapshot.
	c.Abort(p)
	if _, err := c.Get(m.ID); err != nil {
		t.Fatalf("Abort after Commit removed the snapshot: %v", err)
	}
	if _, err := c.Commit(p, testMeta()); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("second Commit = %v, want FailedPrecondition", err)
	}
}

func TestListSortedAndFiltered(t *testing.T) {
	c, _ := openCatalog(t, "")
	sb1, sb2 := idGen.New(), idGen.New()
	var all, of1 []string
	for i := range 6 {
		sb := sb1
		if i%2 == 1 {
			sb = sb2
		}
		m := snapshotOf(t, c, sb, fmt.Sprintf("s%d", i))
		all = append(all, m.ID)
		if sb == sb1 {
			of1 = append(of1, m.ID)
		}
	}
	idsOf := func(l []Meta) []string {
		var out []string
		for _, m := range l {
			out = append(out, m.ID)
		}
		return out
	}
	if got := idsOf(c.List("")); !reflect.DeepEqual(got, all) {
		t.Fatalf("List() = %v, want %v", got, all)
	}
	if got := idsOf(c.List(sb1)); !reflect.DeepEqual(got, of1) {
		t.Fatalf("List(sb1) = %v, want %v", got, of1)
	}
	if got := c.List(idGen.New()); len(got) != 0 {
		t.Fatalf("List(other) = %v", got)
	}
}

func TestDuplicateName(t *testing.T) {
	c, _ := openCatalog(t, "")
	sb, other := idGen.New(), idGen.New()
	p, err := c.Begin(sb, "dup")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Begin(sb, "dup"); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("Begin while pending = %v, want AlreadyExists", err)
	}
	// The same name in another sandbox is fine.
	po, err := c.Begin(other, "dup")
	if err != nil {
		t.Fatal(err)
	}
	c.Abort(po)
	writeFiles(t, p)
	if _, err := c.Commit(p, testMeta()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Begin(sb, "dup"); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("Begin after commit = %v, want AlreadyExists", err)
	}
}

func TestConcurrentBeginSameName(t *testing.T) {
	c, _ := openCatalog(t, "")
	sb := idGen.New()
	const n = 16
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		won     []*Pending
		errsDup int
	)
	for range n {
		wg.Go(func() {
			p, err := c.Begin(sb, "race")
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				won = append(won, p)
			case errors.Is(err, errdefs.ErrAlreadyExists):
				errsDup++
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if len(won) != 1 || errsDup != n-1 {
		t.Fatalf("%d Begins succeeded and %d were AlreadyExists, want 1 and %d", len(won), errsDup, n-1)
	}
	c.Abort(won[0])
}

func TestAbortLeavesNothing(t *testing.T) {
	c, _ := openCatalog(t, "")
	sb := idGen.New()
	p, err := c.Begin(sb, "gone")
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, p)
	c.Abort(p)
	c.Abort(p) // idempotent
	if got := entries(t, c.Dir()); len(got) != 0 {
		t.Fatalf("catalog directory holds %v after Abort", got)
	}
	if l := c.List(""); len(l) != 0 {
		t.Fatalf("List after Abort = %v", l)
	}
	if _, err := c.Commit(p, testMeta()); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("Commit after Abort = %v, want FailedPrecondition", err)
	}
	// The name is free again.
	p2, err := c.Begin(sb, "gone")
	if err != nil {
		t.Fatalf("Begin after Abort: %v", err)
	}
	c.Abort(p2)
}

func TestCommitFailureLeavesNothing(t *testing.T) {
	for _, tc := range []struct {
		desc  string
		spoil func(t *testing.T, p *Pending)
		want  string
		meta  func(*Meta)
	}{
		{"disk missing", func(t *testing.T, p *Pending) { os.Remove(p.DiskPath) }, "file disk.ext4", nil},
		{"mem missing", func(t *testing.T, p *Pending) { os.Remove(p.MemPath) }, "file mem", nil},
		{"vmstate is a symlink", func(t *testing.T, p *Pending) {
			os.Remove(p.VMStatePath)
			if err := os.Symlink(p.MemPath, p.VMStatePath); err != nil {
				t.Fatal(err)
			}
		}, "file vmstate", nil},
		{"disk is a directory", func(t *testing.T, p *Pending) {
			os.Remove(p.DiskPath)
			if err := os.Mkdir(p.DiskPath, 0o700); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file", nil},
		{"bad type", func(*testing.T, *Pending) {}, "unknown snapshot type", func(m *Meta) { m.Type = "weird" }},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			c, _ := openCatalog(t, "")
			sb := idGen.New()
			p, err := c.Begin(sb, "broken")
			if err != nil {
				t.Fatal(err)
			}
			writeFiles(t, p)
			tc.spoil(t, p)
			m := testMeta()
			if tc.meta != nil {
				tc.meta(&m)
			}
			_, err = c.Commit(p, m)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "commit") {
				t.Fatalf("Commit = %v, want an error mentioning %q", err, tc.want)
			}
			if got := entries(t, c.Dir()); len(got) != 0 {
				t.Fatalf("catalog directory holds %v after a failed Commit", got)
			}
			if l := c.List(""); len(l) != 0 {
				t.Fatalf("List after failed Commit = %v", l)
			}
			p2, err := c.Begin(sb, "broken")
			if err != nil {
				t.Fatalf("name not released after failed Commit: %v", err)
			}
			c.Abort(p2)
		})
	}
}

func TestCommitCanceled(t *testing.T) {
	c, _ := openCatalog(t, "")
	p, err := c.Begin(idGen.New(), "cancel")
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, p)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.CommitContext(ctx, p, testMeta()); !errors.Is(err, context.Canceled) {
		t.Fatalf("CommitContext(canceled) = %v", err)
	}
	if got := entries(t, c.Dir()); len(got) != 0 {
		t.Fatalf("catalog directory holds %v after a canceled Commit", got)
	}
}

// writeSnapshotDir writes a snapshot directory by hand for the Open tests.
func writeSnapshotDir(t *testing.T, root, sandboxID, id string, m Meta, files content) string {
	t.Helper()
	dir := filepath.Join(root, sandboxID, id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, MetaName), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestOpenIgnoresIncompleteAndRemovesTemporary(t *testing.T) {
	root := filepath.Join(t.TempDir(), "snapshots")
	c, _ := openCatalog(t, root)
	sb := idGen.New()
	good := snapshotOf(t, c, sb, "good")
	goodFiles := content{}
	for name := range good.Files {
		b, err := os.ReadFile(filepath.Join(good.Dir, name))
		if err != nil {
			t.Fatal(err)
		}
		goodFiles[name] = b
	}
	// A copy of good's meta with another id and name, written by hand.
	variant := func(name string) (Meta, string) {
		m := good
		m.ID, m.Name, m.Dir = idGen.New(), name, ""
		m.Files = map[string]FileInfo{}
		for k, v := range good.Files {
			m.Files[k] = v
		}
		return m, m.ID
	}
	var ignored []string

	m, id := variant("nometa")
	d := writeSnapshotDir(t, root, sb, id, m, goodFiles)
	os.Remove(filepath.Join(d, MetaName))
	ignored = append(ignored, d)

	m, id = variant("badjson")
	d = writeSnapshotDir(t, root, sb, id, m, goodFiles)
	os.WriteFile(filepath.Join(d, MetaName), []byte("{not json"), 0o600)
	ignored = append(ignored, d)

	m, id = variant("missingdisk")
	d = writeSnapshotDir(t, root, sb, id, m, goodFiles)
	os.Remove(filepath.Join(d, DiskName))
	ignored = append(ignored, d)

	m, id = variant("wrongsize")
	d = writeSnapshotDir(t, root, sb, id, m, goodFiles)
	os.WriteFile(filepath.Join(d, MemName), []byte("short"), 0o600)
	ignored = append(ignored, d)

	m, id = variant("unlisted")
	delete(m.Files, VMStateName)
	ignored = append(ignored, writeSnapshotDir(t, root, sb, id, m, goodFiles))

	m, _ = variant("wrongid")
	ignored = append(ignored, writeSnapshotDir(t, root, sb, idGen.New(), m, goodFiles))

	m, id = variant("wrongsandbox")
	ignored = append(ignored, writeSnapshotDir(t, root, idGen.New(), id, m, goodFiles))

	m, id = variant("../evil")
	ignored = append(ignored, writeSnapshotDir(t, root, sb, id, m, goodFiles))

	m, id = variant("good") // duplicate name, newer id
	ignored = append(ignored, writeSnapshotDir(t, root, sb, id, m, goodFiles))

	m, id = variant("unknownalgorithm")
	fi := m.Files[MemName]
	fi.Algorithm = "blake3"
	m.Files[MemName] = fi
	ignored = append(ignored, writeSnapshotDir(t, root, sb, id, m, goodFiles))

	m, id = variant("traversal")
	m.Files["../../etc"] = FileInfo{Name: "../../etc", Size: 1, SHA256: sum([]byte("x"))}
	ignored = append(ignored, writeSnapshotDir(t, root, sb, id, m, goodFiles))

	m, _ = variant("notanid")
	ignored = append(ignored, writeSnapshotDir(t, root, sb, "not-an-id", m, goodFiles))

	m, id = variant("unknownsandboxdir")
	// (the log line names the unknown sandbox directory)
	ignored = append(ignored, filepath.Dir(writeSnapshotDir(t, root, "lost+found", id, m, goodFiles)))

	// Leftover temporary directories: a pending snapshot and a deletion.
	tmp1 := filepath.Join(root, sb, ".tmp-"+idGen.New())
	tmp2 := filepath.Join(root, sb, ".tmp-"+idGen.New()+"-deleted")
	lonely := idGen.New()
	tmp3 := filepath.Join(root, lonely, ".tmp-"+idGen.New())
	for _, d := range []string{tmp1, tmp2, tmp3} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(d, MemName), []byte("partial"), 0o600)
	}
	if err := os.WriteFile(filepath.Join(root, "stray-file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}

	c2, logs := openCatalog(t, root)
	l := c2.List("")
	if len(l) != 1 || !reflect.DeepEqual(l[0], good) {
		t.Fatalf("List after Open = %+v, want only %+v\nlog:\n%s", l, good, logs)
	}
	for _, d := range ignored {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("Open removed ignored directory %s: %v", d, err)
		}
		if !strings.Contains(logs.String(), d) {
			t.Errorf("no log line for ignored %s", d)
		}
	}
	for _, d := range []string{tmp1, tmp2, tmp3} {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("leftover %s not removed: %v", d, err)
		}
		if !strings.Contains(logs.String(), "removed leftover temporary directory") || !strings.Contains(logs.String(), d) {
			t.Errorf("no log line for removed %s", d)
		}
	}
	if _, err := os.Stat(filepath.Join(root, lonely)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("empty sandbox directory left after removing its leftovers: %v", err)
	}
	if _, err := os.Stat(good.Dir); err != nil {
		t.Fatalf("complete snapshot touched: %v", err)
	}
	if !strings.Contains(logs.String(), "incomplete snapshot") {
		t.Errorf("log does not say incomplete:\n%s", logs)
	}
}

func TestOpenRereadsCommitted(t *testing.T) {
	root := filepath.Join(t.TempDir(), "snapshots")
	c, _ := openCatalog(t, root)
	sb1, sb2 := idGen.New(), idGen.New()
	want := []Meta{snapshotOf(t, c, sb1, "a"), snapshotOf(t, c, sb2, "a"), snapshotOf(t, c, sb1, "b")}
	p, err := c.Begin(sb1, "pending") // left pending: a crash
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, p)

	c2, _ := openCatalog(t, root)
	if got := c2.List(""); !reflect.DeepEqual(got, want) {
		t.Fatalf("reopened List = %+v\nwant %+v", got, want)
	}
	if _, err := os.Stat(p.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pending directory survived Open: %v", err)
	}
	if _, err := c2.Begin(sb1, "a"); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("Begin of an existing name after Open = %v, want AlreadyExists", err)
	}
	p2, err := c2.Begin(sb1, "pending")
	if err != nil {
		t.Fatal(err)
	}
	c2.Abort(p2)
	// Opening a path that does not exist creates it.
	fresh := filepath.Join(t.TempDir(), "a", "b")
	c3, _ := openCatalog(t, fresh)
	if st, err := os.Stat(fresh); err != nil || !st.IsDir() || len(c3.List("")) != 0 {
		t.Fatalf("Open of a new directory: %v %v", st, err)
	}
}

func TestDeleteWaitsForPins(t *testing.T) {
	c, _ := openCatalog(t, "")
	sb := idGen.New()
	m := snapshotOf(t, c, sb, "pinned")
	got, release, err := c.Acquire(m.ID)
	if err != nil || got.ID != m.ID {
		t.Fatalf("Acquire = %+v, %v", got, err)
	}
	_, release2, err := c.Acquire(m.ID)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = c.Delete(ctx, m.ID)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "being restored; try again") {
		t.Fatalf("Delete while pinned = %v, want FailedPrecondition", err)
	}
	for name, fi := range m.Files {
		if err := VerifyFile(filepath.Join(m.Dir, name), fi, true); err != nil {
			t.Fatalf("files changed under a pin: %v", err)
		}
	}

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- c.Delete(ctx, m.ID)
	}()
	release()
	release() // only the first call counts
	select {
	case err := <-done:
		t.Fatalf("Delete returned %v with a pin still held", err)
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := os.Stat(m.Dir); err != nil {
		t.Fatalf("files removed with a pin held: %v", err)
	}
	release2()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(c.Dir(), sb)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("sandbox directory left after deleting its last snapshot: %v", err)
	}
	if got := entries(t, c.Dir()); len(got) != 0 {
		t.Fatalf("catalog directory holds %v", got)
	}
	if _, err := c.Get(m.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Get after Delete = %v", err)
	}
	if _, _, err := c.Acquire(m.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Acquire after Delete = %v", err)
	}
	// The name is free again.
	snapshotOf(t, c, sb, "pinned")
}

func TestDelete(t *testing.T) {
	c, _ := openCatalog(t, "")
	sb := idGen.New()
	if err := c.Delete(context.Background(), idGen.New()); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Delete(unknown) = %v, want NotFound", err)
	}
	if err := c.Delete(context.Background(), "../../etc"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Delete(path) = %v, want NotFound", err)
	}
	a, b := snapshotOf(t, c, sb, "a"), snapshotOf(t, c, sb, "b")
	// A pending snapshot is not visible to Delete.
	p, err := c.Begin(sb, "c")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Abort(p)
	if err := c.Delete(context.Background(), p.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Delete(pending) = %v, want NotFound", err)
	}
	if err := c.Delete(context.Background(), a.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(context.Background(), a.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("second Delete = %v, want NotFound", err)
	}
	// The other snapshot and the sandbox directory remain.
	if got, want := entries(t, filepath.Join(c.Dir(), sb)), []string{".tmp-" + p.ID, b.ID}; !reflect.DeepEqual(got, want) {
		t.Fatalf("sandbox directory = %v, want %v", got, want)
	}
	if l := c.List(""); len(l) != 1 || l[0].ID != b.ID {
		t.Fatalf("List = %+v", l)
	}
}

func TestVerifyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	data := []byte("hello snapshot")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(path, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	good := FileInfo{Name: "f", Size: int64(len(data)), SHA256: sum(data)}
	for _, tc := range []struct {
		desc     string
		path     string
		fi       FileInfo
		checksum bool
		ok       bool
	}{
		{"size only", path, good, false, true},
		{"checksum", path, good, true, true},
		{"wrong size", path, FileInfo{Size: 3, SHA256: good.SHA256}, false, false},
		{"wrong checksum", path, FileInfo{Size: good.Size, SHA256: sum([]byte("other"))}, true, false},
		{"wrong checksum not checked", path, FileInfo{Size: good.Size, SHA256: sum([]byte("other"))}, false, true},
		{"missing", filepath.Join(dir, "nope"), good, false, false},
		{"symlink", filepath.Join(dir, "link"), good, false, false},
		{"directory", dir, good, false, false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			err := VerifyFile(tc.path, tc.fi, tc.checksum)
			if tc.ok != (err == nil) {
				t.Fatalf("VerifyFile = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, errdefs.ErrFailedPrecondition) {
				t.Fatalf("VerifyFile = %v, want FailedPrecondition", err)
			}
		})
	}
}

// TestConcurrentUse exercises the catalog from many goroutines for the
// race detector.
func TestConcurrentUse(t *testing.T) {
	c, _ := openCatalog(t, "")
	sandboxes := []string{idGen.New(), idGen.New()}
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			sb := sandboxes[w%2]
			for i := range 5 {
				name := fmt.Sprintf("w%d-%d", w, i)
				p, err := c.Begin(sb, name)
				if err != nil {
					t.Error(err)
					return
				}
				if i%3 == 2 {
					c.Abort(p)
					continue
				}
				writeFiles(t, p, 10, 20, 30)
				m, err := c.Commit(p, testMeta())
				if err != nil {
					t.Error(err)
					return
				}
				_ = c.List("")
				_ = c.List(sb)
				_, release, err := c.Acquire(m.ID)
				if err != nil {
					t.Error(err)
					return
				}
				release()
				if i%2 == 0 {
					if err := c.Delete(context.Background(), m.ID); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
	wg.Wait()
	// What the catalog holds is what a fresh Open finds.
	c2, _ := openCatalog(t, c.Dir())
	if got, want := c2.List(""), c.List(""); !reflect.DeepEqual(got, want) {
		t.Fatalf("reopened List = %d snapshots, want %d", len(got), len(want))
	}
}
