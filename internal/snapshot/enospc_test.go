package snapshot

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// smallTmpfs mounts a 1 MiB tmpfs under a temporary directory and
// unmounts it when the test ends. It skips without root.
func smallTmpfs(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=1m,mode=0700"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fill appends 4 KiB blocks to path until the file system is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	blk := bytes.Repeat([]byte{'m'}, 4096)
	for range 1 << 12 {
		if _, err := f.Write(blk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatal("the tmpfs never filled up")
}

func TestCommitENOSPC(t *testing.T) {
	root := filepath.Join(smallTmpfs(t), "snapshots")
	c, _ := openCatalog(t, root)
	sb := idGen.New()
	p, err := c.Begin(sb, "full")
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{p.VMStatePath, p.DiskPath} {
		if err := os.WriteFile(path, []byte("small"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	fill(t, p.MemPath) // no room left for meta.json
	_, err = c.Commit(p, testMeta())
	if !errors.Is(err, errdefs.ErrResourceExhausted) || !strings.Contains(err.Error(), "no space left on device") ||
		!strings.Contains(err.Error(), MetaName) {
		t.Fatalf("Commit on a full file system = %v, want ResourceExhausted naming %s", err, MetaName)
	}
	if got := entries(t, root); len(got) != 0 {
		t.Fatalf("catalog directory holds %v after a failed Commit", got)
	}
	// The space is back and the name is free.
	p, err = c.Begin(sb, "full")
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, p, 100, 200, 300)
	if _, err := c.Commit(p, testMeta()); err != nil {
		t.Fatalf("Commit after freeing space: %v", err)
	}
}

func TestMergeDiffENOSPC(t *testing.T) {
	dir := smallTmpfs(t)
	base := filepath.Join(dir, "base")
	diff := filepath.Join(dir, "diff")
	const size = 400 << 10
	if err := os.WriteFile(base, bytes.Repeat([]byte{'A'}, size), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(diff)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.WriteAt([]byte("B"), 0)
	f.Close()
	fill(t, filepath.Join(dir, "ballast")) // tmpfs cannot reflink: the copy of base fails
	out := filepath.Join(dir, "out")
	err = MergeDiff(context.Background(), base, diff, out)
	if !errors.Is(err, errdefs.ErrResourceExhausted) || !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("MergeDiff on a full file system = %v, want ResourceExhausted", err)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("failed MergeDiff left %s: %v", out, err)
	}
}
