package snapshot

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

func TestMergeDiff(t *testing.T) {
	dir := t.TempDir()
	const size = 1 << 20
	base := filepath.Join(dir, "base")
	if err := os.WriteFile(base, bytes.Repeat([]byte{'A'}, size), 0o600); err != nil {
		t.Fatal(err)
	}
	// The diff layer is sparse: three data regions, the last one written
	// zeros (a dirty page that became zero must replace the base too).
	type region struct {
		off  int64
		data []byte
	}
	regions := []region{
		{64 << 10, bytes.Repeat([]byte{'B'}, 4<<10)},
		{512 << 10, bytes.Repeat([]byte{'C'}, 8<<10)},
		{size - 4<<10, make([]byte, 4<<10)},
	}
	diff := filepath.Join(dir, "diff")
	f, err := os.Create(diff)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, r := range regions {
		if _, err := f.WriteAt(r.data, r.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	if err := MergeDiff(context.Background(), base, diff, out); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{'A'}, size)
	for _, r := range regions {
		copy(want[r.off:], r.data)
	}
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("merged file differs first at offset %d: %q, want %q", i, got[i], want[i])
			}
		}
		t.Fatalf("merged file has %d bytes, want %d", len(got), len(want))
	}
	// The inputs are untouched.
	if b, _ := os.ReadFile(base); !bytes.Equal(b, bytes.Repeat([]byte{'A'}, size)) {
		t.Fatal("base changed")
	}

	// An existing output is refused, and left alone.
	if err := MergeDiff(context.Background(), base, diff, out); err == nil {
		t.Fatal("MergeDiff over an existing file succeeded")
	}
	if b, _ := os.ReadFile(out); !bytes.Equal(b, want) {
		t.Fatal("existing output changed")
	}
}

func TestMergeDiffErrors(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base")
	small := filepath.Join(dir, "small")
	os.WriteFile(base, bytes.Repeat([]byte{'A'}, 8192), 0o600)
	os.WriteFile(small, bytes.Repeat([]byte{'B'}, 4096), 0o600)
	out := filepath.Join(dir, "out")
	if err := MergeDiff(context.Background(), base, small, out); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("MergeDiff with different sizes = %v, want InvalidArgument", err)
	}
	if err := MergeDiff(context.Background(), base, filepath.Join(dir, "missing"), out); err == nil {
		t.Fatal("MergeDiff with a missing diff succeeded")
	}
	if err := MergeDiff(context.Background(), filepath.Join(dir, "missing"), base, out); err == nil {
		t.Fatal("MergeDiff with a missing base succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := MergeDiff(ctx, base, base, out); !errors.Is(err, context.Canceled) {
		t.Fatalf("MergeDiff(canceled) = %v", err)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("failed MergeDiff left %s: %v", out, err)
	}
}
