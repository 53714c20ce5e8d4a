package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
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

// FindByCwd returns the pids of the processes whose working directory
// satisfies match. Processes that end during the scan, or whose working
// directory cannot be read (zombies, kernel threads), are skipped.
func FindByCwd(match func(cwd string) bool) ([]int, error) {
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
		if cwd, err := Cwd(pid); err == nil && match(cwd) {
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

// KillStrays kills (SIGKILL) every process whose working directory
// satisfies match and whose pid is not in keep, waiting for each to end,
// and returns the pid and working directory of each one killed.
func KillStrays(ctx context.Context, match func(cwd string) bool, keep map[int]bool) (map[int]string, error) {
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
			return err == nil && got == cwd
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
