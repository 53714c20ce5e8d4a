// Package testutil holds helpers shared by the project's tests: building the
// Firecracker emulator once per test binary, short temporary directories for
// unix sockets, root gates and leak checks for processes.
//
// It is imported only from _test.go files.
package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// EmulatorPackage is the import path of the Firecracker emulator command.
const EmulatorPackage = "github.com/firecracker-vmm/firecracker-vmm/cmd/firecracker-emulator"

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Emulator returns the path of a firecracker-emulator binary. When the
// environment variable VMM_EMULATOR names an existing file (the Makefile sets
// it) that file is used; otherwise the emulator is built once per test binary
// into a temporary directory that is shared by the tests of that binary.
func Emulator(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("VMM_EMULATOR"); p != "" {
		if _, err := os.Stat(p); err == nil {
			abs, err := filepath.Abs(p)
			if err != nil {
				t.Fatalf("emulator path %q: %v", p, err)
			}
			return abs
		}
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "fcemu-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "firecracker-emulator")
		out, err := exec.Command("go", "build", "-o", buildPath, EmulatorPackage).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build %s: %v\n%s", EmulatorPackage, err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("building the emulator: %v", buildErr)
	}
	return buildPath
}

// ShortDir returns a fresh directory under /tmp whose path is short enough
// for unix socket paths (t.TempDir paths can exceed the 108-byte sun_path
// limit). It is removed when the test ends.
func ShortDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "vmt")
	if err != nil {
		t.Fatalf("short temp dir: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// RequiresRoot skips the test with a message unless it runs as root.
func RequiresRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: this test needs root (run the suite as root)")
	}
}

// ProcessesOf lists the pids of live processes whose executable is exe.
// Zombies (already exited, not yet reaped) are not counted.
func ProcessesOf(exe string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		link, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil {
			continue
		}
		link = strings.TrimSuffix(link, " (deleted)")
		if link != exe {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err == nil {
			if i := strings.LastIndexByte(string(stat), ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
				continue
			}
		}
		pids = append(pids, pid)
	}
	return pids
}

// NoProcessesLeft registers a cleanup that fails the test when, shortly
// after it ends, any process still runs the executable exe. Leftovers are
// killed so that one leaking test does not poison the next.
func NoProcessesLeft(t testing.TB, exe string) {
	t.Helper()
	t.Cleanup(func() {
		deadline := time.Now().Add(3 * time.Second)
		for {
			pids := ProcessesOf(exe)
			if len(pids) == 0 {
				return
			}
			if time.Now().After(deadline) {
				for _, pid := range pids {
					if p, err := os.FindProcess(pid); err == nil {
						_ = p.Kill()
					}
				}
				t.Errorf("processes of %s left behind: %v", exe, pids)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}
