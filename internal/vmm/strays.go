package vmm

import (
	"context"
	"errors"
	"fmt"
	"time"
)

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
