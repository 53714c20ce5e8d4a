package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Processes whose working directory a caller owns are found through
// /proc: Firecracker (and the jailer before it execs Firecracker) runs in
// the sandbox's directory, or in its jail's root, so a VMM can be found
// even when no record of its pid survived.

// procDir is where the process file system is mounted.
const procDir = "/proc"

// Cwd returns the working directory of process pid as seen from this
// process's root.
func Cwd(pid int) (string, error) {
	return os.Readlink(procDir + "/" + strconv.Itoa(pid) + "/cwd")
}

// FindByCwd returns the pids of the processes for which match(pid, their
// working directory) holds. Processes that end during the scan, or whose
// working directory cannot be read (zombies, kernel threads), are skipped.
func FindByCwd(match func(pid int, cwd string) bool) ([]int, error) {
	entries, err := os.ReadDir(procDir)
	if err != nil {
		return nil, fmt.Errorf("vmm: listing processes: %w", err)
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if cwd, err := Cwd(pid); err == nil && match(pid, cwd) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// KillVerified kills process pid, which need not be a child, if verify
// still holds for it once a pidfd pins the pid (so that a reused pid is
// never signalled), and waits until it has ended or ctx ends. A process
// that is already gone, or no longer verified, is not an error.
func KillVerified(ctx context.Context, pid int, verify func(pid int) bool) error {
	p, err := Attach(pid)
	if err != nil {
		return nil // gone already
	}
	defer p.Close()
	if !verify(pid) {
		return nil
	}
	if err := p.Kill(); err != nil {
		return fmt.Errorf("vmm: killing pid %d: %w", pid, err)
	}
	select {
	case <-p.Done():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("vmm: pid %d did not end after SIGKILL: %w", pid, ctx.Err())
	}
}

// strayKillTimeout bounds the wait for one killed process.
const strayKillTimeout = 5 * time.Second

// KillStrays kills (SIGKILL) every process for which match(pid, its
// working directory) holds and whose pid is not in keep, waiting for each
// to end, and returns the pid and working directory of each one killed.
// match is checked again once the pid is pinned.
func KillStrays(ctx context.Context, match func(pid int, cwd string) bool, keep map[int]bool) (map[int]string, error) {
	pids, err := FindByCwd(match)
	if err != nil {
		return nil, err
	}
	killed := map[int]string{}
	var errs []error
	for _, pid := range pids {
		if keep[pid] {
			continue
		}
		cwd, err := Cwd(pid)
		if err != nil {
			continue
		}
		kctx, cancel := context.WithTimeout(ctx, strayKillTimeout)
		err = KillVerified(kctx, pid, func(pid int) bool {
			got, err := Cwd(pid)
			return err == nil && got == cwd && match(pid, got)
		})
		cancel()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		killed[pid] = cwd
	}
	return killed, errors.Join(errs...)
}

// HasInstanceID reports whether process pid's command line carries the
// pair "--id id", as Firecracker's and the jailer's do: a process merely
// working in a sandbox's directory (an operator's shell, say) does not.
func HasInstanceID(pid int, id string) bool {
	data, err := os.ReadFile(procDir + "/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimSuffix(string(data), "\x00"), "\x00")
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--id" && args[i+1] == id {
			return true
		}
	}
	return false
}
