package bench

import (
	"strings"
	"testing"

	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// TestRunRecoverSmall runs the recovery benchmark with three sandboxes and
// one round: both daemons restart and serve, the loaded one lists its
// sandboxes READY, and no VMM is left.
func TestRunRecoverSmall(t *testing.T) {
	emu := testutil.Emulator(t)
	testutil.NoProcessesLeft(t, emu)
	var log strings.Builder
	r, err := RunRecover(t.Context(), Options{
		Daemon: testutil.Binary(t, "vmm-daemon"), Firecracker: emu,
		N: 3, Concurrency: 2, VCPUs: 1, MemoryMiB: 128, RootfsMiB: 8,
		Dir: testutil.ShortDir(t), Log: &log,
	}, 1)
	if err != nil {
		t.Fatalf("RunRecover: %v\n%s", err, log.String())
	}
	if r.Empty.N != 1 || r.Loaded.N != 1 || r.Empty.P50 <= 0 || r.Loaded.P50 <= 0 {
		t.Fatalf("restart series: empty %+v loaded %+v", r.Empty, r.Loaded)
	}
	if r.Listed != 3 || r.Ready != 3 || r.Create.N != 3 {
		t.Fatalf("listed %d, ready %d, created %d after the restart, want 3 each", r.Listed, r.Ready, r.Create.N)
	}
	var out strings.Builder
	r.Fprint(&out)
	if !strings.Contains(out.String(), "adopted/empty") {
		t.Fatalf("report lacks the ratio line:\n%s", out.String())
	}
}
