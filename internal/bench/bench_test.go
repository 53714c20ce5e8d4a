package bench

import (
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/firecracker-vmm/firecracker-vmm/internal/sandbox"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Both series boot like a sandbox created with the daemon's defaults.
func TestBootArgsAreTheDaemonDefault(t *testing.T) {
	if bootArgs != sandbox.DefaultBootArgs {
		t.Errorf("bootArgs = %q, want sandbox.DefaultBootArgs %q", bootArgs, sandbox.DefaultBootArgs)
	}
}

func TestSummarize(t *testing.T) {
	var lat []time.Duration
	for i := 1; i <= 100; i++ {
		lat = append(lat, time.Duration(i)*time.Millisecond)
	}
	s := Summarize("x", lat, 2*time.Second)
	tests := []struct {
		name      string
		got, want time.Duration
	}{
		{"p50", s.P50, 50 * time.Millisecond},
		{"p90", s.P90, 90 * time.Millisecond},
		{"p99", s.P99, 99 * time.Millisecond},
		{"max", s.Max, 100 * time.Millisecond},
		{"mean", s.Mean, 50500 * time.Microsecond},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}
	if s.Throughput != 50 {
		t.Errorf("throughput = %v, want 50/s", s.Throughput)
	}
	if one := Summarize("one", []time.Duration{time.Second}, time.Second); one.P99 != time.Second || one.P50 != time.Second {
		t.Errorf("single sample: %+v", one)
	}
	if empty := Summarize("none", nil, 0); empty.N != 0 || empty.P50 != 0 {
		t.Errorf("empty: %+v", empty)
	}
}

// TestRunSmall runs a tiny comparison end to end: real daemon, real
// emulator processes, both series complete.
func TestRunSmall(t *testing.T) {
	emu := testutil.Emulator(t)
	testutil.NoProcessesLeft(t, emu)
	var log strings.Builder
	r, err := Run(t.Context(), Options{
		Daemon: testutil.Binary(t, "vmm-daemon"), Firecracker: emu,
		Env: []string{"FCEMU_BOOT_DELAY_MS=5"},
		N:   4, Concurrency: 2, VCPUs: 1, MemoryMiB: 128, RootfsMiB: 8, Snapshots: 2,
		Dir: testutil.ShortDir(t), Log: &log,
		Network: os.Geteuid() == 0, // root: also the series with networking (in a throwaway netns)
	})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, log.String())
	}
	series := []Stats{r.Baseline, r.Daemon}
	if os.Geteuid() == 0 {
		series = append(series, r.Network)
	}
	for _, s := range series {
		if s.N != 4 || s.P50 < 5*time.Millisecond || s.Throughput <= 0 {
			t.Fatalf("%s stats = %+v", s.Name, s)
		}
	}
	if r.Restore.N != 2 || r.Pause.N != 2 || r.Pause.P50 <= 0 || r.Restore.P50 <= 0 {
		t.Fatalf("snapshot series: pause %+v restore %+v", r.Pause, r.Restore)
	}
	var out strings.Builder
	r.Fprint(&out)
	if !strings.Contains(out.String(), "ratio daemon/baseline") || !strings.Contains(out.String(), "restore→READY") {
		t.Fatalf("report lacks the ratio line:\n%s", out.String())
	}
}
