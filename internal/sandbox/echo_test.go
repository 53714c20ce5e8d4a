package sandbox

import (
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// TestHugeStringsAreNotEchoed sends 4 MB paths, label keys and state
// filters: each is refused with an error (the request log's line) that
// quotes a bounded prefix and the full length, never the whole string.
func TestHugeStringsAreNotEchoed(t *testing.T) {
	e := newTestEnv(t, t.TempDir(), &fakeRuntime{}, nil)
	const size = 4 << 20
	huge := strings.Repeat("a", size)
	kdir := filepath.Join(e.dataDir, KernelsDir)
	// A path of many short components, inside an allowed directory.
	deep := kdir + strings.Repeat("/abcdefg", size/8)
	tests := []struct {
		name string
		req  CreateRequest
		want error
	}{
		{"kernel outside", CreateRequest{Kernel: "/" + huge}, errdefs.ErrPermissionDenied},
		{"kernel inside, too long", CreateRequest{Kernel: filepath.Join(kdir, huge)}, nil},
		{"kernel inside, deep", CreateRequest{Kernel: deep}, nil},
		{"relative rootfs", CreateRequest{Rootfs: huge}, errdefs.ErrInvalidArgument},
		{"initrd with NUL", CreateRequest{Initrd: "/\x00" + huge}, errdefs.ErrInvalidArgument},
		{"non-ASCII initrd", CreateRequest{Initrd: strings.Repeat("\u00e9\U0001F600", size/6)}, errdefs.ErrInvalidArgument},
		{"label key", CreateRequest{Labels: map[string]string{huge: "v"}}, errdefs.ErrInvalidArgument},
	}
	check := func(t *testing.T, err error, want error) {
		t.Helper()
		if err == nil {
			t.Fatal("accepted")
		}
		if want != nil && !errors.Is(err, want) {
			t.Errorf("error %v, want %v", err, want)
		}
		msg := err.Error()
		if len(msg) > 4*MaxEchoLen+512 {
			t.Errorf("error of %d bytes echoes the input: %.200s...", len(msg), msg)
		}
		if !strings.Contains(msg, "bytes)") {
			t.Errorf("error %q does not note the full length", msg)
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.m.Create(t.Context(), tt.req)
			check(t, err, tt.want)
		})
	}
	t.Run("state filter", func(t *testing.T) {
		_, err := e.m.List(t.Context(), ListFilter{States: []State{State(huge)}})
		check(t, err, errdefs.ErrInvalidArgument)
	})
	if dirs := e.sandboxDirs(t); len(dirs) != 0 {
		t.Errorf("refused creates left %v", dirs)
	}
}

// TestQuoteBounds checks quote at and around the bound, and that a cut
// never splits a character.
func TestQuoteBounds(t *testing.T) {
	at := strings.Repeat("x", MaxEchoLen)
	tests := []struct {
		name, in, want string
	}{
		{"short", "a\"b", `"a\"b"`},
		{"at the bound", at, strconv.Quote(at)},
		{"one over", at + "y", strconv.Quote(at) + "... (257 bytes)"},
		{"cut inside a character", strings.Repeat("x", MaxEchoLen-1) + "\u00e9",
			strconv.Quote(strings.Repeat("x", MaxEchoLen-1)) + "... (257 bytes)"},
	}
	for _, tt := range tests {
		if got := quote(tt.in); got != tt.want {
			t.Errorf("%s: quote = %.80q..., want %.80q...", tt.name, got, tt.want)
		}
	}
}
