package daemon

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestDeriveBudget checks the host-derived budget and that explicit
// values win.
func TestDeriveBudget(t *testing.T) {
	tests := []struct {
		name                  string
		vcpus, memoryMiB      int
		cpus, memTotal        int
		wantVCPUs, wantMemory int
	}{
		{"derived", 0, 0, 8, 65536, 8 * VCPUOvercommit, 65536 - 6553},
		{"small host keeps 1 GiB", 0, 0, 2, 4096, 2 * VCPUOvercommit, 3072},
		{"tiny host keeps half", 0, 0, 1, 1024, VCPUOvercommit, 512},
		{"explicit", 12, 2048, 8, 65536, 12, 2048},
		{"memory unknown: no limit", 0, 0, 4, 0, 4 * VCPUOvercommit, 0},
		{"explicit memory, unknown host", 0, 777, 4, 0, 4 * VCPUOvercommit, 777},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, m := deriveBudget(tt.vcpus, tt.memoryMiB, tt.cpus, tt.memTotal)
			if v != tt.wantVCPUs || m != tt.wantMemory {
				t.Errorf("budget %d vCPUs, %d MiB; want %d and %d", v, m, tt.wantVCPUs, tt.wantMemory)
			}
		})
	}
}

// TestMemTotalMiB reads MemTotal from meminfo files.
func TestMemTotalMiB(t *testing.T) {
	tests := []struct {
		name, body string
		want       int
	}{
		{"usual", "MemTotal:       24683568 kB\nMemFree:  100 kB\n", 24105},
		{"not first", "Foo: 1 kB\nMemTotal: 2048 kB\n", 2},
		{"missing", "MemFree: 1 kB\n", 0},
		{"bad unit", "MemTotal: 5 MB\n", 0},
		{"garbage", "MemTotal: lots kB\n", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "meminfo")
			if err := os.WriteFile(p, []byte(tt.body), 0o600); err != nil {
				t.Fatal(err)
			}
			if got := memTotalMiB(p); got != tt.want {
				t.Errorf("memTotalMiB = %d, want %d", got, tt.want)
			}
		})
	}
	if got := memTotalMiB(filepath.Join(t.TempDir(), "none")); got != 0 {
		t.Errorf("a missing file gives %d", got)
	}
}

// TestBudgetConfig checks that [limits] max_total_* reach the manager
// (0 derived from this host) and that negative values are refused.
func TestBudgetConfig(t *testing.T) {
	cfg, err := Load(writeConfig(t, "[limits]\nmax_total_vcpus = 40\nmax_total_memory_mib = 9000\n"), true, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if mc := cfg.ManagerConfig(); mc.MaxTotalVCPUs != 40 || mc.MaxTotalMemoryMiB != 9000 {
		t.Errorf("manager budget %d vCPUs, %d MiB", mc.MaxTotalVCPUs, mc.MaxTotalMemoryMiB)
	}
	cfg, err = Load(writeConfig(t, ""), true, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	mc := cfg.ManagerConfig()
	if mc.MaxTotalVCPUs != VCPUOvercommit*runtime.NumCPU() {
		t.Errorf("derived %d vCPUs, want %d", mc.MaxTotalVCPUs, VCPUOvercommit*runtime.NumCPU())
	}
	if total := memTotalMiB(meminfoPath); total > 0 && (mc.MaxTotalMemoryMiB <= 0 || mc.MaxTotalMemoryMiB >= total) {
		t.Errorf("derived %d MiB of a host with %d", mc.MaxTotalMemoryMiB, total)
	}
	for _, key := range []string{"max_total_vcpus", "max_total_memory_mib"} {
		_, err := Load(writeConfig(t, "[limits]\n"+key+" = -1\n"), true, Overrides{})
		if err == nil || !strings.Contains(err.Error(), "limits."+key) {
			t.Errorf("%s = -1: %v", key, err)
		}
	}
}
