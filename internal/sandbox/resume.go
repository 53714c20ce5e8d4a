package sandbox

import (
	"context"
	"fmt"
	"time"
)

// resume resumes a sandbox after a checkpoint's pause, on a context that
// the caller's cancellation does not end (a preemption does: ctx is the
// checkpoint's preemptible context), retrying once.
func (m *Manager) resume(ctx context.Context, inst *instance, mach machine) error {
	attempt := func() error {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.calls.resume)
		defer cancel()
		stop := context.AfterFunc(ctx, func() {
			if preempted(ctx) {
				cancel()
			}
		})
		defer stop()
		return mach.Resume(rctx)
	}
	err := attempt()
	if err == nil || preempted(ctx) {
		return err
	}
	inst.log.Warn("resuming after a checkpoint failed; retrying", "error", err)
	time.Sleep(resumeRetryDelay)
	if err2 := attempt(); err2 != nil {
		return fmt.Errorf("%w (retry: %v)", err, err2)
	}
	return nil
}

// failUnresumed records a sandbox whose VM a checkpoint paused and could
// not resume (the VMM refused or did not answer within its bounds): the
// sandbox is FAILED, with the reason, and its VMM is killed, so that no
// paused, unresponsive VMM is ever shown as ready. The caller holds the
// operation lock; the record is flushed (a failure is logged: the change
// cannot be undone).
func (m *Manager) failUnresumed(ctx context.Context, inst *instance, resumeErr error) {
	reason := fmt.Sprintf("the VMM did not resume after a checkpoint and was killed (%v)", resumeErr)
	inst.mu.Lock()
	if s := inst.rec.State; s != StateReady && s != StateRunning {
		inst.mu.Unlock()
		return // the VMM exited meanwhile: its watcher recorded it
	}
	inst.rec.FailureReason = reason
	inst.rec.StoppedAt = m.now()
	m.transitionLocked(inst, StateFailed, ActionFailed, map[string]string{"reason": reason})
	inst.mu.Unlock()
	// The watcher returns (the state is no longer ready): this call owns
	// the VMM.
	inst.cancel()
	<-inst.done
	inst.mu.Lock()
	mach := inst.vm
	inst.vm = nil
	inst.rec.Process.PID = 0
	inst.pidStart = 0
	inst.markLocked()
	inst.mu.Unlock()
	if mach != nil {
		if _, err := mach.Kill(context.WithoutCancel(ctx)); err != nil {
			inst.log.Error("killing the VMM that did not resume", "error", err)
		}
	}
	if err := m.place.ReleaseWorkspace(inst.id, inst.limits); err != nil {
		inst.log.Error("removing the jail", "error", err)
	}
	m.flushLogged(ctx, inst)
	inst.log.Error("sandbox failed: its VMM did not resume after a checkpoint", "error", resumeErr)
}

// failedStepOr names the step a preempted checkpoint was in.
func failedStepOr(step string) string {
	if step == "" {
		return "before the resume"
	}
	return step
}
