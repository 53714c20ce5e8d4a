package network

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// runInNS runs fn on an OS thread that has joined the network namespace
// target. The calling goroutine's thread is never touched: fn runs on a
// fresh, locked goroutine whose thread joins the namespace and is restored
// afterwards; if the restore fails the thread is discarded rather than
// reused. Sockets fn creates (and namespace-relative files it opens, such
// as /proc/sys/net/...) belong to the namespace and stay there after fn
// returns. fn must not rely on goroutines it starts being in the namespace.
func runInNS(target netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err, restored := runLocked(target, fn)
		if restored {
			runtime.UnlockOSThread()
		} // else: exit locked, so the runtime destroys the thread.
		errc <- err
	}()
	return <-errc
}

// runLocked does the work of runInNS on the locked thread. restored reports
// whether the thread is back in its original namespace.
func runLocked(target netns.NsHandle, fn func() error) (err error, restored bool) {
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("get thread network namespace: %w", err), true
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("join network namespace: %w", err), true
	}
	if verr := sameNamespace(target); verr != nil {
		err = fmt.Errorf("join network namespace: %w", verr)
	} else {
		err = fn()
	}
	if rerr := netns.Set(orig); rerr != nil {
		return errors.Join(err, fmt.Errorf("restore thread network namespace: %w", rerr)), false
	}
	return err, true
}

// sameNamespace verifies that the calling thread is in namespace h.
func sameNamespace(h netns.NsHandle) error {
	var want, got unix.Stat_t
	if err := unix.Fstat(int(h), &want); err != nil {
		return fmt.Errorf("stat namespace: %w", err)
	}
	if err := unix.Stat(threadNetnsPath(), &got); err != nil {
		return fmt.Errorf("stat thread namespace: %w", err)
	}
	if want.Dev != got.Dev || want.Ino != got.Ino {
		return errors.New("thread is not in the requested network namespace")
	}
	return nil
}

// threadNetnsPath is the calling thread's network namespace file.
func threadNetnsPath() string {
	return fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
}

// writeSysctl writes value to the sysctl file at path (under /proc/sys) and
// reads it back. /proc/sys/net/... resolves against the network namespace of
// the thread that opens it, so call it from a thread inside the namespace.
func writeSysctl(path, value string) error {
	if err := os.WriteFile(path, []byte(value+"\n"), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", path, value, err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("sysctl %s: read back: %w", path, err)
	}
	if got := strings.TrimSpace(string(b)); got != value {
		return fmt.Errorf("sysctl %s: wrote %s, reads %s", path, value, got)
	}
	return nil
}

// ipForwardSysctl is the per-namespace IPv4 forwarding switch.
const ipForwardSysctl = "/proc/sys/net/ipv4/ip_forward"

// prepareNetnsDir creates dir and makes it a shared mount point, as
// iproute2 does for /run/netns: namespace bind mounts made later then
// propagate to mount namespaces cloned from ours (a jailer's, say), and
// unmounting them here unmounts them there too, so a deleted namespace is
// not kept alive by a copy of its mount.
func prepareNetnsDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet
		if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind mount %s on itself: %w", dir, err)
		}
		err = unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", dir, err)
	}
	return nil
}

// errNetnsExists says the namespace's mount point exists already.
var errNetnsExists = errors.New("namespace exists")

// createNetns creates a new network namespace bind-mounted at path (which
// must not exist) and runs init inside it before the creating thread returns
// to its own namespace. If init fails the namespace is still mounted; the
// caller deletes it (deleteNetns).
func createNetns(path string, init func() error) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s already exists: %w", path, errNetnsExists)
	}
	if err != nil {
		return fmt.Errorf("create namespace mount point: %w", err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err, restored := createLocked(path, init)
		if restored {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// createLocked does createNetns's work on a locked thread.
func createLocked(path string, init func() error) (err error, restored bool) {
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("get thread network namespace: %w", err), true
	}
	defer orig.Close()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("unshare network namespace: %w", err), true
	}
	// From here on the thread is in the new namespace: always restore.
	if err = unix.Mount(threadNetnsPath(), path, "none", unix.MS_BIND, ""); err != nil {
		err = fmt.Errorf("bind mount namespace at %s: %w", path, err)
	} else if init != nil {
		err = init()
	}
	if rerr := netns.Set(orig); rerr != nil {
		return errors.Join(err, fmt.Errorf("restore thread network namespace: %w", rerr)), false
	}
	return err, true
}

// deleteNetns unmounts and removes the namespace bind mount at path. A
// missing or unmounted path is not an error. The namespace itself (and every
// device in it) goes away once nothing else holds it: no process in it, no
// open handle.
func deleteNetns(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// isNetnsMount reports whether path is a mounted network namespace.
func isNetnsMount(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}

// netnsPath joins the namespace directory and name.
func netnsPath(dir, name string) string { return filepath.Join(dir, name) }
