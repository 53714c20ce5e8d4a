package vmm

import (
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/firecracker"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// TestRealFirecracker runs the lifecycle scenario against a real Firecracker
// binary on a KVM host. It is opt-in: set FC_E2E=1 and FC_BINARY (firecracker
// binary), FC_KERNEL (uncompressed vmlinux) and FC_ROOTFS (ext4 image whose
// init reboots on Ctrl+Alt+Del, e.g. a systemd guest).
func TestRealFirecracker(t *testing.T) {
	bin, kernel, rootfs := os.Getenv("FC_BINARY"), os.Getenv("FC_KERNEL"), os.Getenv("FC_ROOTFS")
	if os.Getenv("FC_E2E") != "1" || bin == "" || kernel == "" || rootfs == "" {
		t.Skip("skipping: set FC_E2E=1, FC_BINARY, FC_KERNEL and FC_ROOTFS to run against a real Firecracker (needs /dev/kvm)")
	}
	testutil.NoProcessesLeft(t, mustAbs(t, bin))
	l := &DirectLauncher{Config: Config{Binary: bin, SocketTimeout: 5 * time.Second}}
	ctx := testCtx(t, 3*time.Minute)
	dir := testutil.ShortDir(t)
	root := filepath.Join(dir, "rootfs.ext4")
	copyFile(t, rootfs, root)

	vm, err := Start(ctx, l, VMSpec{
		ID: "e2e-1", Dir: dir, VCPUs: 1, MemoryMiB: 256, Kernel: kernel,
		BootArgs: "console=ttyS0 reboot=k panic=1 pci=off",
		Drives:   []DriveSpec{{ID: "rootfs", Path: root, Root: true}},
		Vsock:    &VsockSpec{CID: 3, UDSPath: filepath.Join(dir, "v.sock")},
		Logging:  LoggingSpec{LogPath: filepath.Join(dir, "fc.log"), Level: "Info", MetricsPath: filepath.Join(dir, "metrics.json")},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill(ctx)
	assertState(t, vm, firecracker.StateRunning)
	time.Sleep(2 * time.Second) // let the guest boot a little
	if err := vm.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	assertState(t, vm, firecracker.StatePaused)
	snap := SnapshotSpec{StatePath: filepath.Join(dir, "vm.snap"), MemPath: filepath.Join(dir, "vm.mem")}
	if err := vm.CreateSnapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	assertGone(t, vm.SocketPath, vm.VsockPath)

	restored, err := Restore(ctx, l, RestoreSpec{
		ID: "e2e-2", Dir: dir, APISocket: filepath.Join(dir, "restored.sock"), ConsolePath: filepath.Join(dir, "restored.console"),
		SnapshotPath: snap.StatePath, MemFilePath: snap.MemPath, ResumeVM: true,
		VsockPath: filepath.Join(dir, "v2.sock"),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer restored.Kill(ctx)
	assertState(t, restored, firecracker.StateRunning)
	st, err := restored.Shutdown(testCtx(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("restored VM ended: %s", st)
	if st != (ExitStatus{Code: 0, Known: true}) {
		t.Errorf("graceful shutdown ended with %s, want exit 0 (does the guest reboot on Ctrl+Alt+Del?)", st)
	}
	assertGone(t, restored.SocketPath, restored.VsockPath)
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	if !filepath.IsAbs(p) {
		var err error
		if p, err = filepath.Abs(p); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
