package sandbox

import (
	"context"
	"fmt"
	"maps"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// Stop stops a sandbox gracefully within timeout (0: Config.StopTimeout),
// then forcibly, and returns it in StateStopped. A sandbox that is still
// starting has its boot cancelled. When the stopped record cannot be
// written (a full disk: ResourceExhausted) Stop fails although the VMM is
// stopped and Get shows it stopped; the store still holds the record it
// had (a restart finds the recorded VMM gone and records the sandbox
// stopped), and the next successful write of the sandbox's record stores
// the stop: a retried Stop writes it (and then answers FailedPrecondition,
// already stopped), as does a Remove. Stopping a stopped or failed sandbox is
// a FailedPrecondition. A checkpoint in progress is waited for up to
// timeout, then interrupted (it fails with Aborted and leaves no
// snapshot).
func (m *Manager) Stop(ctx context.Context, id string, timeout time.Duration) (Sandbox, error) {
	if timeout < 0 {
		return Sandbox{}, fmt.Errorf("stop timeout %v: must not be negative: %w", timeout, errdefs.ErrInvalidArgument)
	}
	if timeout == 0 {
		timeout = m.cfg.StopTimeout
	}
	inst, err := m.lockLiveWith(ctx, id, func(inst *instance, ctx context.Context) error {
		return inst.lockPreempting(ctx, timeout)
	})
	if err != nil {
		return Sandbox{}, err
	}
	defer inst.unlock()
	if err := m.stopOp(ctx, inst, timeout, false, "stop requested"); err != nil {
		return Sandbox{}, err
	}
	inst.mu.Lock()
	defer inst.mu.Unlock()
	return inst.snapshotLocked(), nil
}

// stopOp moves a live sandbox through STOPPING to STOPPED: it cancels
// the boot or the watcher, then shuts the VMM down (SendCtrlAltDel, wait up
// to timeout, SIGKILL) or, with force, kills it at once. The caller holds
// inst's operation lock (not inst.mu). The stop always completes: when ctx
// ends the VMM is killed rather than left running. It returns an error
// when the stopped record could not be written.
func (m *Manager) stopOp(ctx context.Context, inst *instance, timeout time.Duration, force bool, reason string) error {
	inst.mu.Lock()
	from := inst.rec.State
	switch from {
	case StateStopped, StateFailed:
		inst.mu.Unlock()
		// A stop whose record could not be written is written now, or
		// reported again.
		if err := m.flush(ctx, inst); err != nil {
			return err
		}
		if from == StateStopped {
			return fmt.Errorf("sandbox %s is already stopped: %w", inst.id, errdefs.ErrFailedPrecondition)
		}
		return fmt.Errorf("sandbox %s has failed and is not running (remove it): %w", inst.id, errdefs.ErrFailedPrecondition)
	}
	if !m.transitionLocked(inst, StateStopping, ActionStopping, map[string]string{"reason": reason}) {
		inst.mu.Unlock()
		return fmt.Errorf("sandbox %s: cannot stop in state %s: %w", inst.id, from, errdefs.ErrFailedPrecondition)
	}
	inst.mu.Unlock()
	m.flushLogged(ctx, inst)
	inst.log.Info("stopping sandbox", "from", string(from), "timeout", timeout, "force", force, "reason", reason)
	m.crash(CrashStopStopping)

	// End the background goroutine: a boot is cancelled (vmm.Start kills
	// and reaps a half-started VMM); a watcher returns. Either way this
	// stop then owns the VMM, if there is one.
	inst.cancel()
	<-inst.done
	inst.mu.Lock()
	mach := inst.vm
	inst.mu.Unlock()

	attrs := map[string]string{"reason": reason}
	if mach != nil {
		var st vmm.ExitStatus
		var err error
		if force {
			st, err = mach.Kill(ctx)
		} else {
			sctx, cancel := context.WithTimeout(ctx, timeout)
			st, err = mach.Shutdown(sctx)
			cancel()
		}
		maps.Copy(attrs, exitAttrs(st))
		forced := force || (st.Known && st.Signal == syscall.SIGKILL)
		attrs["forced"] = strconv.FormatBool(forced)
		if err != nil {
			attrs["error"] = err.Error()
			inst.log.Error("stopping the VMM", "error", err)
		}
		inst.log.Info("VMM stopped", "status", st.String(), "forced", forced)
	} else if from == StateStarting {
		attrs["boot_cancelled"] = "true"
	}
	m.crash(CrashStopExited)
	// The VMM is gone: its jail goes too (the VMM's own cleanup did it
	// already unless the boot was cancelled before a launch).
	if err := m.place.ReleaseWorkspace(inst.id, inst.limits); err != nil {
		attrs["error"] = err.Error()
		inst.log.Error("removing the jail", "error", err)
	}
	inst.mu.Lock()
	inst.vm = nil
	inst.rec.Process.PID = 0
	inst.rec.StoppedAt = m.now()
	m.transitionLocked(inst, StateStopped, ActionStopped, attrs)
	inst.mu.Unlock()
	return m.flush(ctx, inst)
}

// Remove deletes a sandbox and every resource it holds. When its record
// cannot be written (a full disk: ResourceExhausted) nothing is released
// and the sandbox stays, stopped when force had stopped it. A sandbox that
// is not stopped or failed needs force, which kills its VMM (or cancels its
// boot) without a graceful wait, and interrupts a checkpoint in progress
// at once (it fails with Aborted and leaves no snapshot).
func (m *Manager) Remove(ctx context.Context, id string, force bool) error {
	lock := (*instance).lock
	if force {
		lock = func(inst *instance, ctx context.Context) error { return inst.lockPreempting(ctx, 0) }
	}
	inst, err := m.lockLiveWith(ctx, id, lock)
	if err != nil {
		return err
	}
	defer inst.unlock()
	return m.removeOp(ctx, inst, force, "remove requested")
}

// removeOp is Remove; the caller holds inst's operation lock (not
// inst.mu).
func (m *Manager) removeOp(ctx context.Context, inst *instance, force bool, reason string) error {
	inst.mu.Lock()
	state := inst.rec.State
	inst.mu.Unlock()
	if !state.Final() {
		if !force {
			return fmt.Errorf("sandbox %s is %s; stop it first or remove it with --force: %w",
				inst.id, state, errdefs.ErrFailedPrecondition)
		}
		if err := m.stopOp(ctx, inst, 0, true, reason); err != nil {
			return err
		}
	}
	inst.mu.Lock()
	dir := inst.rec.Dir
	// Record the intent first: a daemon that dies from here on leaves a
	// record that the next start finishes removing, never a record whose
	// resources are half gone.
	marked := !inst.removing
	if marked {
		inst.removing = true
		inst.markLocked()
	}
	inst.mu.Unlock()
	if err := m.flush(ctx, inst); err != nil {
		// Nothing was released, and the TTL (if any) still runs: the
		// sandbox stays as it was, and no later write of its record may
		// say it is being removed.
		if marked {
			inst.mu.Lock()
			inst.removing = false
			inst.markLocked()
			inst.mu.Unlock()
		}
		return fmt.Errorf("remove: recording the removal before releasing anything: %w", err)
	}
	inst.mu.Lock()
	if inst.ttl != nil {
		inst.ttl.Stop()
	}
	inst.mu.Unlock()
	m.crash(CrashRemoveMarked)
	if err := m.releaseAll(ctx, inst.id, inst.limits, dir); err != nil {
		return err
	}
	m.crash(CrashRemoveReleased)
	m.mu.Lock()
	delete(m.sandboxes, inst.id)
	m.mu.Unlock()
	inst.mu.Lock()
	inst.removed = true
	m.publishLocked(inst, ActionRemoved, map[string]string{"reason": reason})
	inst.mu.Unlock()
	// The sandbox is gone; a record the store still holds says removing,
	// and the next start finishes the removal.
	m.flushLogged(ctx, inst)
	inst.log.Info("sandbox removed", "reason", reason)
	return nil
}

// releaseAll releases what a sandbox without a VMM holds: its network
// (and lease), its jail and its directory. It is idempotent.
func (m *Manager) releaseAll(ctx context.Context, id string, limits vmm.Limits, dir string) error {
	if err := m.cfg.Network.Detach(ctx, id); err != nil {
		return fmt.Errorf("sandbox %s: releasing its network: %w", id, err)
	}
	if err := m.place.ReleaseWorkspace(id, limits); err != nil {
		return fmt.Errorf("sandbox %s: %w", id, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("sandbox %s: removing %s: %w", id, dir, err)
	}
	return nil
}

// expire removes a sandbox whose TTL ran out, preempting a checkpoint in
// progress as Remove --force does. It runs on the timer's goroutine,
// tracked by the manager's WaitGroup unless Shutdown has begun.
func (m *Manager) expire(id string) {
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		return
	}
	inst := m.sandboxes[id]
	if inst == nil {
		m.mu.Unlock()
		return
	}
	m.wg.Add(1)
	m.mu.Unlock()
	defer m.wg.Done()

	ctx := m.baseCtx
	// A forced removal: a checkpoint in progress is preempted.
	if err := inst.lockPreempting(ctx, 0); err != nil {
		return
	}
	defer inst.unlock()
	inst.mu.Lock()
	if inst.removed {
		inst.mu.Unlock()
		return
	}
	m.publishLocked(inst, ActionExpired, map[string]string{"reason": "ttl", "ttl": inst.rec.TTL.String()})
	inst.mu.Unlock()
	m.flushLogged(ctx, inst)
	inst.log.Info("sandbox TTL expired")
	if err := m.removeOp(context.WithoutCancel(ctx), inst, true, "ttl"); err != nil {
		inst.log.Error("removing expired sandbox", "error", err)
	}
}
