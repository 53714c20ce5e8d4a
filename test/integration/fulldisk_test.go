package integration

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// TestCreateOnFullDisk puts the data dir on a small tmpfs (in a private
// mount namespace, which the daemon shares) so that a sandbox's rootfs
// copy runs out of space: Create answers RESOURCE_EXHAUSTED saying so and
// leaves nothing, and the sandbox created before is untouched.
func TestCreateOnFullDisk(t *testing.T) {
	if !testutil.InMountNamespace(t) {
		return
	}
	dir := fullDiskDataDir(t)
	d := startDaemonAt(t, dir, options{})
	id := strings.TrimSpace(d.mustVMM("create", "--wait"))
	_, err := d.sb.Create(t.Context(), &sandboxv1.CreateRequest{})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "no space left") {
		t.Fatalf("create on a full disk: %v, want ResourceExhausted saying no space left", err)
	}
	if got := d.sandboxDirs(); !slices.Equal(got, []string{id}) {
		t.Errorf("sandbox directories after the failed create: %v, want only %s", got, id)
	}
	l, err := d.sb.List(t.Context(), &sandboxv1.ListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := l.GetSandboxes(); len(got) != 1 || got[0].GetId() != id ||
		got[0].GetState() != sandboxv1.SandboxState_SANDBOX_STATE_READY {
		t.Errorf("sandboxes after the failed create: %v", got)
	}
}

// fullDiskDataDir returns a daemon directory whose data dir is a 24 MiB
// tmpfs holding a kernel and a rootfs of 10 MiB of real data: the image
// and one sandbox's copy fit, a third copy does not. Call it inside
// testutil.InMountNamespace's child.
func fullDiskDataDir(t *testing.T) string {
	t.Helper()
	dir := testutil.ShortDir(t)
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	testutil.MountTmpfs(t, data, "24m")
	for _, sub := range []string{"kernels", "images"} {
		if err := os.MkdirAll(filepath.Join(data, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(data, "kernels", "vmlinux"), "kernel\n", 0)
	blob := make([]byte, 10<<20)
	_, _ = rand.Read(blob)
	if err := os.WriteFile(filepath.Join(data, "images", "rootfs.ext4"), blob, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}
