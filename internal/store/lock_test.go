package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestLock(t *testing.T) {
	dir := t.TempDir()
	release, err := Lock(dir)
	if err != nil {
		t.Fatalf("Lock: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(dir, LockFileName))
	if err != nil || strings.TrimSpace(string(data)) != strconv.Itoa(os.Getpid()) {
		t.Fatalf("lock file holds %q, %v; want our pid", data, err)
	}

	// flock is per open file description: a second Lock conflicts even in
	// this process.
	_, err = Lock(dir)
	want := fmt.Sprintf("another vmm-daemon (pid %d) uses %s", os.Getpid(), dir)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), want) {
		t.Fatalf("second Lock = %v, want ErrLocked with %q", err, want)
	}

	release()
	release() // idempotent

	release2, err := Lock(dir)
	if err != nil {
		t.Fatalf("Lock after release: %v", err)
	}
	release2()
}

func TestLockUnknownHolder(t *testing.T) {
	dir := t.TempDir()
	release, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	// A holder whose pid is not in the file is still reported.
	if err := os.Truncate(filepath.Join(dir, LockFileName), 0); err != nil {
		t.Fatal(err)
	}
	_, err = Lock(dir)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "another vmm-daemon uses "+dir) {
		t.Fatalf("second Lock = %v", err)
	}
}

func TestLockMissingDir(t *testing.T) {
	if _, err := Lock(filepath.Join(t.TempDir(), "nope")); err == nil || errors.Is(err, ErrLocked) {
		t.Fatalf("Lock on a missing dir = %v", err)
	}
}
