package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// LockFileName is the name of the lock file inside the data directory.
const LockFileName = "vmm.lock"

// Lock takes an exclusive, non-blocking flock on data_dir/vmm.lock and
// writes the caller's pid into it. The daemon holds it for its whole life
// and calls release (idempotent) on shutdown; the kernel drops the lock if
// the process dies.
// When another process (or another open of the file in this process) holds
// the lock, Lock fails with an error of class ErrLocked naming the holder's
// pid when the file says it: "another vmm-daemon (pid N) uses /data".
//
// The lock file is never removed: unlinking a lock file others may have
// opened would let two holders lock two different files.
func Lock(dataDir string) (release func(), err error) {
	path := filepath.Join(dataDir, LockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock data dir %s: %w", dataDir, err)
	}
	if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			if pid := readPID(f); pid > 0 {
				return nil, fmt.Errorf("another vmm-daemon (pid %d) uses %s: %w", pid, dataDir, ErrLocked)
			}
			return nil, fmt.Errorf("another vmm-daemon uses %s (%s is locked): %w", dataDir, path, ErrLocked)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := writePID(f); err != nil {
		_ = flock(f, unix.LOCK_UN)
		_ = f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			// Clear the pid so a stale file names nobody. Closing the
			// last descriptor drops the lock even if the unlock failed.
			_ = f.Truncate(0)
			_ = flock(f, unix.LOCK_UN)
			_ = f.Close()
		})
	}
	return release, nil
}

// flock calls flock(2), retrying on EINTR.
func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// readPID reads the pid a lock holder wrote (0 when unknown).
func readPID(f *os.File) int {
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 64))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// writePID replaces the file's content with this process's pid.
func writePID(f *os.File) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	if _, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		return err
	}
	return f.Sync()
}
