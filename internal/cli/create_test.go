package cli

import (
	"strings"
	"testing"
)

// TestCreateExplicitZeroIsAnError checks that an explicitly given zero or
// negative --vcpus or --memory is a usage error that never reaches the
// daemon, while an absent flag sends zero (the daemon's default).
func TestCreateExplicitZeroIsAnError(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr string // substring
		wantVCPUs  uint32
		wantMemory uint32
	}{
		{"vcpus 0", []string{"--vcpus", "0"}, 2, "invalid --vcpus 0: give a positive number", 0, 0},
		{"vcpus=0", []string{"--vcpus=0", "--memory", "256"}, 2, "invalid --vcpus 0", 0, 0},
		{"memory 0", []string{"--memory", "0"}, 2, "invalid --memory 0: give a positive number", 0, 0},
		{"memory 0 with vcpus", []string{"--vcpus", "2", "--memory", "0"}, 2, "invalid --memory 0", 0, 0},
		{"negative vcpus", []string{"--vcpus", "-1"}, 2, `invalid argument "-1"`, 0, 0},
		{"negative memory", []string{"--memory", "-512"}, 2, `invalid argument "-512"`, 0, 0},
		{"absent: the daemon's defaults", nil, 0, "", 0, 0},
		{"given", []string{"--vcpus", "2", "--memory", "1024"}, 0, "", 2, 1024},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, nil)
			r := f.vmm(t, append([]string{"create"}, tt.args...)...)
			if r.code != tt.wantCode {
				t.Fatalf("exit %d, want %d (stderr %q)", r.code, tt.wantCode, r.stderr)
			}
			if tt.wantCode != 0 {
				if !strings.Contains(r.stderr, tt.wantStderr) || r.stdout != "" {
					t.Errorf("stderr %q (want %q), stdout %q", r.stderr, tt.wantStderr, r.stdout)
				}
				if f.lastCreate != nil {
					t.Errorf("the refused create reached the daemon: %v", f.lastCreate)
				}
				return
			}
			req := f.lastCreate
			if req == nil || req.GetVcpus() != tt.wantVCPUs || req.GetMemoryMib() != tt.wantMemory {
				t.Errorf("request %v, want vcpus %d memory %d", req, tt.wantVCPUs, tt.wantMemory)
			}
		})
	}
}
