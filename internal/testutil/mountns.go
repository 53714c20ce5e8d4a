package testutil

import (
	"bytes"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// mountNSEnv names the test that a child test process runs inside its own
// mount namespace (see InMountNamespace).
const mountNSEnv = "VMM_TEST_MOUNT_NS"

// InMountNamespace runs the calling top-level test again in a child test
// process inside a new, private mount namespace and reports false; in
// that child it reports true, and the test goes on there. Mounts made in
// the child (MountTmpfs), and processes it starts, never reach the host's
// mounts, and vanish with the child. It skips without root.
func InMountNamespace(t *testing.T) bool {
	t.Helper()
	if os.Getenv(mountNSEnv) == t.Name() {
		return true
	}
	RequiresRoot(t)
	args := []string{"-test.run=^" + t.Name() + "$", "-test.count=1"}
	if testing.Verbose() {
		args = append(args, "-test.v")
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), mountNSEnv+"="+t.Name())
	// CLONE_NEWNS in Unshareflags also makes every mount private (Go
	// remounts / with MS_REC|MS_PRIVATE), so nothing propagates back.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the test in its mount namespace failed: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("PASS")) {
		t.Fatalf("the test in its mount namespace did not run:\n%s", out)
	}
	t.Logf("in its mount namespace:\n%s", out)
	return false
}

// MountTmpfs mounts a tmpfs of size (e.g. "4m") on dir, or on a new
// temporary directory when dir is "", and returns the mount point; call it
// only inside InMountNamespace's child.
func MountTmpfs(t *testing.T, dir, size string) string {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size="+size+",mode=0755"); err != nil {
		t.Fatalf("mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}
