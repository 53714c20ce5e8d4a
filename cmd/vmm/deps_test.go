package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestDeps keeps daemon-side code out of the vmm binary: the CLI talks to
// the daemon only through the sandbox.v1 API.
func TestDeps(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	const module = "github.com/firecracker-vmm/firecracker-vmm/"
	banned := []string{
		module + "internal/sandbox",
		module + "internal/daemon",
		module + "internal/server",
		module + "internal/vmm",
		module + "internal/fcemu",
		module + "internal/firecracker",
		"go.etcd.io/bbolt",
		"github.com/vishvananda/netlink",
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("suspiciously few dependencies: %q", deps)
	}
	for _, dep := range deps {
		for _, b := range banned {
			if dep == b || strings.HasPrefix(dep, b+"/") {
				t.Errorf("cmd/vmm depends on %s (banned: the CLI must not link daemon code)", dep)
			}
		}
	}
	for _, want := range []string{module + "internal/cli", module + "internal/client", "github.com/spf13/cobra"} {
		found := false
		for _, dep := range deps {
			found = found || dep == want
		}
		if !found {
			t.Errorf("cmd/vmm does not depend on %s; is the test looking at the right package?", want)
		}
	}
}
