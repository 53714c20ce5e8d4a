package sandbox

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// errShuttingDown is returned by Create once Shutdown has begun.
func errShuttingDown() error {
	return fmt.Errorf("the sandbox manager is shutting down: %w", errdefs.ErrUnavailable)
}

// isClosing reports whether Shutdown has begun.
func (m *Manager) isClosing() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closing
}

// Shutdown ends the manager. In ShutdownStop mode it stops every sandbox
// (gracefully within Config.StopTimeout, in parallel) and removes it and
// everything it holds, its store record included; when ctx ends first, the
// remaining VMMs are killed instead of waited for, and ctx's error is
// returned. In ShutdownLeave mode it only ends the background work and
// closes the VMM handles: the VMMs keep running and Recover re-adopts them
// at the next start. Either way it waits for all background work, and
// Create fails with ErrUnavailable from now on.
func (m *Manager) Shutdown(ctx context.Context) error {
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		select {
		case <-m.shutdownDone:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("sandbox manager shutdown: %w", ctx.Err())
		}
	}
	m.closing = true
	insts := slices.Collect(maps.Values(m.sandboxes))
	m.mu.Unlock()
	if m.cfg.OnShutdown == ShutdownLeave {
		return m.leave(ctx, insts)
	}
	m.log.Info("stopping all sandboxes", "count", len(insts))
	m.eachOp(ctx, insts, func(inst *instance) {
		inst.mu.Lock()
		removed, final := inst.removed, inst.rec.State.Final()
		inst.mu.Unlock()
		if removed {
			return
		}
		if !final {
			if err := m.stopOp(ctx, inst, m.cfg.StopTimeout, false, "daemon shutdown"); err != nil {
				inst.log.Error("stopping sandbox at shutdown", "error", err)
				inst.mu.Lock()
				final = inst.rec.State.Final()
				inst.mu.Unlock()
				if !final {
					return
				}
			}
		}
		// "stop" mode ends with nothing: release the sandbox's files
		// and its record too.
		if err := m.removeOp(context.WithoutCancel(ctx), inst, true, "daemon shutdown"); err != nil {
			inst.log.Error("removing sandbox at shutdown", "error", err)
		}
	})
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sandbox manager shutdown: graceful stops cut short: %w", err)
	}
	return nil
}

// leave is Shutdown in ShutdownLeave mode: every TTL timer and watcher
// ends and every VMM handle is closed, but the VMMs keep running and their
// records stay in the store for the next Recover. A sandbox still booting
// has its boot cancelled (it is recorded as failed).
func (m *Manager) leave(ctx context.Context, insts []*instance) error {
	m.log.Info("leaving sandboxes running", "count", len(insts))
	m.eachOp(ctx, insts, func(inst *instance) {
		inst.cancel()
		<-inst.done
		inst.mu.Lock()
		mach := inst.vm
		inst.vm = nil
		inst.mu.Unlock()
		if mach != nil {
			if err := mach.Close(); err != nil {
				inst.log.Warn("closing the VMM handle", "error", err)
			}
		}
	})
	return nil
}

// eachOp is the common part of both shutdown modes: it stops every TTL
// timer, runs fn on every instance in parallel with its operation lock held
// (waiting for the lock is not bounded by ctx: the work must complete), then
// waits for all background goroutines and marks the shutdown done.
func (m *Manager) eachOp(ctx context.Context, insts []*instance, fn func(*instance)) {
	var wg sync.WaitGroup
	for _, inst := range insts {
		inst.mu.Lock()
		if inst.ttl != nil {
			inst.ttl.Stop()
		}
		inst.mu.Unlock()
		wg.Go(func() {
			if err := inst.lock(context.WithoutCancel(ctx)); err != nil {
				return
			}
			defer inst.unlock()
			fn(inst)
		})
	}
	wg.Wait()
	m.wg.Wait()
	m.baseCancel()
	close(m.shutdownDone)
}
