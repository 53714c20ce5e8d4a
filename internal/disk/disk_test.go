package disk

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"go.uber.org/goleak"

	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// makeSparse writes a file of size bytes with data only at the given
// offsets (4 KiB of a non-zero pattern each).
func makeSparse(t *testing.T, path string, size int64, dataAt ...int64) {
	t.Helper()
	var rs []testutil.Region
	for i, off := range dataAt {
		rs = append(rs, testutil.Region{Off: off, Data: bytes.Repeat([]byte{byte('a' + i)}, 4096)})
	}
	testutil.WriteSparse(t, path, size, rs...)
}

func blocks(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks
}

func sameContent(t *testing.T, a, b string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x, y) {
		t.Fatalf("%s and %s differ (%d vs %d bytes)", a, b, len(x), len(y))
	}
}

// countdownCtx reports Canceled after its Err method was called n times.
type countdownCtx struct {
	context.Context
	left atomic.Int64
}

func (c *countdownCtx) Err() error {
	if c.left.Add(-1) < 0 {
		return context.Canceled
	}
	return nil
}

func TestCloneFile(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name      string
		size      int64
		dataAt    []int64
		noReflink bool
		noSync    bool
	}{
		{"empty", 0, nil, true, false},
		{"all hole", 16 * mib, nil, true, false},
		{"sparse", 16 * mib, []int64{0, 10 * mib, 16*mib - 4096}, true, false},
		{"dense small", 8192, []int64{0, 4096}, true, false},
		{"unaligned size", 10*mib + 123, []int64{5 * mib}, true, false},
		{"reflink if supported", 32 * mib, []int64{mib, 20 * mib}, false, false},
		{"sparse without fsync", 16 * mib, []int64{0, 10 * mib}, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
			makeSparse(t, src, tt.size, tt.dataAt...)
			f, err := os.Open(src)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			m, err := CloneFile(t.Context(), f, dst, Options{NoReflink: tt.noReflink, NoSync: tt.noSync})
			if err != nil {
				t.Fatal(err)
			}
			if tt.noReflink && m != MethodSparseCopy {
				t.Errorf("method %q, want %q", m, MethodSparseCopy)
			}
			t.Logf("method %s", m)
			sameContent(t, src, dst)
			st, err := os.Stat(dst)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != fileMode {
				t.Errorf("mode %v, want %v", st.Mode().Perm(), os.FileMode(fileMode))
			}
			if st.Size() != tt.size {
				t.Errorf("size %d, want %d", st.Size(), tt.size)
			}
			// A sparse copy allocates no more than the source (a reflink
			// shares the extents, which st_blocks still counts).
			if sb, db := blocks(t, src), blocks(t, dst); db > sb {
				t.Errorf("dst has %d blocks, src %d: holes were filled", db, sb)
			}
		})
	}
}

func TestCloneErrors(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir string) (src, dst string)
		ctx     func(t *testing.T) context.Context
		wantErr error
		dstKept bool // dst existed before and must be untouched
	}{
		{
			name: "existing dst refused",
			setup: func(t *testing.T, dir string) (string, string) {
				makeSparse(t, filepath.Join(dir, "src"), 8192, 0)
				if err := os.WriteFile(filepath.Join(dir, "dst"), []byte("keep"), 0o600); err != nil {
					t.Fatal(err)
				}
				return filepath.Join(dir, "src"), filepath.Join(dir, "dst")
			},
			wantErr: os.ErrExist,
			dstKept: true,
		},
		{
			name: "dst symlink refused",
			setup: func(t *testing.T, dir string) (string, string) {
				makeSparse(t, filepath.Join(dir, "src"), 8192, 0)
				if err := os.Symlink(filepath.Join(dir, "elsewhere"), filepath.Join(dir, "dst")); err != nil {
					t.Fatal(err)
				}
				return filepath.Join(dir, "src"), filepath.Join(dir, "dst")
			},
			wantErr: os.ErrExist,
			dstKept: true,
		},
		{
			name: "src missing",
			setup: func(t *testing.T, dir string) (string, string) {
				return filepath.Join(dir, "nope"), filepath.Join(dir, "dst")
			},
			wantErr: os.ErrNotExist,
		},
		{
			name: "src is a directory",
			setup: func(t *testing.T, dir string) (string, string) {
				return dir, filepath.Join(dir, "dst")
			},
		},
		{
			name: "src is a fifo",
			setup: func(t *testing.T, dir string) (string, string) {
				if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
					t.Fatal(err)
				}
				return filepath.Join(dir, "fifo"), filepath.Join(dir, "dst")
			},
		},
		{
			name: "ctx canceled before",
			setup: func(t *testing.T, dir string) (string, string) {
				makeSparse(t, filepath.Join(dir, "src"), 8192, 0)
				return filepath.Join(dir, "src"), filepath.Join(dir, "dst")
			},
			ctx: func(t *testing.T) context.Context {
				ctx, cancel := context.WithCancel(t.Context())
				cancel()
				return ctx
			},
			wantErr: context.Canceled,
		},
		{
			name: "ctx canceled between chunks",
			setup: func(t *testing.T, dir string) (string, string) {
				makeSparse(t, filepath.Join(dir, "src"), 64<<20, 0, 20<<20, 40<<20)
				return filepath.Join(dir, "src"), filepath.Join(dir, "dst")
			},
			ctx: func(t *testing.T) context.Context {
				c := &countdownCtx{Context: t.Context()}
				c.left.Store(3)
				return c
			},
			wantErr: context.Canceled,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			src, dst := tt.setup(t, dir)
			ctx := t.Context()
			if tt.ctx != nil {
				ctx = tt.ctx(t)
			}
			var before []byte
			if tt.dstKept {
				before = snapshot(dst)
			}
			f, err := os.OpenFile(src, os.O_RDONLY|syscall.O_NONBLOCK, 0)
			if err == nil {
				_, err = CloneFile(ctx, f, dst, Options{NoReflink: true})
				f.Close()
			}
			if err == nil {
				t.Fatal("clone succeeded")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			if tt.dstKept {
				after := snapshot(dst)
				if !bytes.Equal(before, after) {
					t.Fatalf("dst changed: %q -> %q", before, after)
				}
				return
			}
			if _, err := os.Lstat(dst); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("dst left behind: %v", err)
			}
		})
	}
}

// snapshot returns a symlink's target or a file's content.
func snapshot(path string) []byte {
	if l, err := os.Readlink(path); err == nil {
		return []byte("link:" + l)
	}
	b, _ := os.ReadFile(path)
	return b
}

func TestCloneMethodPath(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	makeSparse(t, src, 4<<20, 1<<20)
	m, err := CloneMethod(t.Context(), src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if m != MethodReflink && m != MethodSparseCopy {
		t.Fatalf("method %q", m)
	}
	sameContent(t, src, dst)
	if err := Clone(t.Context(), src, dst); !errors.Is(err, os.ErrExist) {
		t.Fatalf("second clone: %v, want ErrExist", err)
	}
	if err := Clone(t.Context(), filepath.Join(dir, "missing"), filepath.Join(dir, "d2")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing src: %v", err)
	}
}

// TestReadWriteFallback exercises the read/write path used when
// copy_file_range is not available: zero blocks become holes.
func TestReadWriteFallback(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	// Dense file: explicit zeros, then data.
	data := make([]byte, 4<<20)
	copy(data[3<<20:], bytes.Repeat([]byte("x"), 5000))
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := out.Truncate(int64(len(data))); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < int64(len(data)); {
		n, err := readWrite(in, out, off, int64(len(data))-off, buf)
		if err != nil {
			t.Fatal(err)
		}
		off += n
	}
	sameContent(t, src, dst)
	if sb, db := blocks(t, src), blocks(t, dst); db >= sb/2 {
		t.Errorf("dst has %d blocks, src %d: zero blocks were written", db, sb)
	}
}

// TestReflink runs only where a reflink-capable directory is provided
// (VMM_REFLINK_DIR, e.g. on XFS with reflink=1 or Btrfs): the test host's
// ext4 has no FICLONE, so Clone falls back there.
func TestReflink(t *testing.T) {
	dir := os.Getenv("VMM_REFLINK_DIR")
	if dir == "" {
		t.Skip("set VMM_REFLINK_DIR to a directory on a reflink-capable filesystem")
	}
	dir, err := os.MkdirTemp(dir, "reflink")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	makeSparse(t, src, 8<<20, 0, 4<<20)
	m, err := CloneMethod(t.Context(), src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if m != MethodReflink {
		t.Fatalf("method %s, want reflink", m)
	}
	sameContent(t, src, dst)
}
