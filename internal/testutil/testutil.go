// Package testutil holds helpers shared by the project's tests: building the
// Firecracker emulator once per test binary, short temporary directories for
// unix sockets, root gates and leak checks for processes.
//
// It is imported only from _test.go files.
package testutil

import (
	"bytes"
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

// binDirPrefix names the per-process directories that hold this test
// process's private copies of the project's binaries.
const binDirPrefix = "vmm-testbin-"

var (
	binMu    sync.Mutex
	binPaths = map[string]string{} // command name → private copy
	binDir   string                // this process's directory, created on first use
)

// Emulator returns the path of a firecracker-emulator binary private to this
// test process (see Binary).
func Emulator(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("VMM_EMULATOR"); p != "" {
		return privateCopy(t, "firecracker-emulator", p)
	}
	return Binary(t, "firecracker-emulator")
}

// Binary returns the path of the named command of this module (its
// directory name under cmd/, e.g. "vmm-daemon"), private to this test
// process: a hard link to (or copy of) $VMM_BIN_DIR/name when that exists
// (the Makefile builds ./bin first), otherwise a fresh `go build`. Private
// paths matter because leak checks find processes by executable path, and
// go test runs several packages' test processes at once.
//
// The directory of copies is removed by a later test process once this one
// has exited (there is no hook at the end of a test process).
func Binary(t testing.TB, name string) string {
	t.Helper()
	if dir := os.Getenv("VMM_BIN_DIR"); dir != "" {
		if p := filepath.Join(dir, name); fileExists(p) {
			return privateCopy(t, name, p)
		}
	}
	binMu.Lock()
	defer binMu.Unlock()
	if p, ok := binPaths[name]; ok {
		return p
	}
	dir, err := processBinDir()
	if err != nil {
		t.Fatalf("test binary dir: %v", err)
	}
	p := filepath.Join(dir, name)
	pkg := "github.com/firecracker-vmm/firecracker-vmm/cmd/" + name
	build := exec.Command("go", "build", "-o", p, pkg)
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // static: the emulators run in empty chroots
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	binPaths[name] = p
	return p
}

// privateCopy links or copies src into this process's directory once.
func privateCopy(t testing.TB, name, src string) string {
	t.Helper()
	binMu.Lock()
	defer binMu.Unlock()
	if p, ok := binPaths[name]; ok {
		return p
	}
	dir, err := processBinDir()
	if err != nil {
		t.Fatalf("test binary dir: %v", err)
	}
	p := filepath.Join(dir, name)
	if err := os.Link(src, p); err != nil {
		data, rerr := os.ReadFile(src)
		if rerr != nil {
			t.Fatalf("copying %s: %v", src, rerr)
		}
		if werr := os.WriteFile(p, data, 0o755); werr != nil {
			t.Fatalf("copying %s: %v", src, werr)
		}
	}
	binPaths[name] = p
	return p
}

// processBinDir returns this process's directory of binaries, creating it
// and removing the directories of test processes that are gone. binMu must
// be held.
func processBinDir() (string, error) {
	if binDir != "" {
		return binDir, nil
	}
	tmp := os.TempDir()
	stale, _ := filepath.Glob(filepath.Join(tmp, binDirPrefix+"*"))
	for _, d := range stale {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), binDirPrefix))
		if err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); os.IsNotExist(err) {
			os.RemoveAll(d)
		}
	}
	dir := filepath.Join(tmp, fmt.Sprintf("%s%d", binDirPrefix, os.Getpid()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	binDir = dir
	return dir, nil
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
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
	return processes(func(pid string) bool {
		link, err := os.Readlink(filepath.Join("/proc", pid, "exe"))
		if err != nil || strings.TrimSuffix(link, " (deleted)") != exe {
			return false
		}
		return !isZombie(pid)
	})
}

// Alive reports whether process pid runs: it exists and is not a zombie
// (signal 0 succeeds on a zombie too).
func Alive(pid int) bool {
	name := strconv.Itoa(pid)
	if _, err := os.Stat(filepath.Join("/proc", name)); err != nil {
		return false
	}
	return !isZombie(name)
}

// isZombie reports whether the process of /proc entry pid has exited but
// not been reaped.
func isZombie(pid string) bool {
	stat, err := os.ReadFile(filepath.Join("/proc", pid, "stat"))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(stat), ')')
	return i > 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}

// ProcessesIn lists the pids of the processes whose working directory is
// inside dir.
func ProcessesIn(dir string) []int {
	return processes(func(pid string) bool {
		cwd, err := os.Readlink(filepath.Join("/proc", pid, "cwd"))
		return err == nil && strings.HasPrefix(cwd, dir+"/")
	})
}

// processes lists the pids for which match (given the pid's /proc entry
// name) is true.
func processes(match func(pid string) bool) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err == nil && match(e.Name()) {
			pids = append(pids, pid)
		}
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

// SyncBuffer is a bytes.Buffer that is safe for one writer and concurrent
// readers (a log sink that a test inspects while the code under test runs).
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Region is data at an offset of a sparse file (WriteSparse).
type Region struct {
	Off  int64
	Data []byte
}

// WriteSparse creates path as a sparse file of size bytes holding only
// regions (everything else is a hole).
func WriteSparse(t testing.TB, path string, size int64, regions ...Region) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, r := range regions {
		if _, err := f.WriteAt(r.Data, r.Off); err != nil {
			t.Fatal(err)
		}
	}
}
