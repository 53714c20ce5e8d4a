package sandbox

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/events"
	"github.com/firecracker-vmm/firecracker-vmm/internal/network"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// run is a sandbox's background goroutine: it starts the VMM with start
// (what names it: "boot" or "restore") and then watches it until it exits
// or ctx is cancelled (by Stop or Remove, which then own the VMM).
func (m *Manager) run(ctx context.Context, inst *instance, what string, start startFunc) {
	defer m.wg.Done()
	defer close(inst.done)
	mach, ok := m.boot(ctx, inst, what, start)
	if !ok {
		return
	}
	m.watch(ctx, inst, mach)
}

// watch waits for a running VMM to exit on its own and records the exit
// (stopped or failed, with an event), or returns when ctx is cancelled (by
// Stop or Remove, which then own the VMM). The exit is collected without
// inst.mu held; a Stop that began meanwhile (the state is then no longer
// ready or running) records the exit itself, once watch has returned.
func (m *Manager) watch(ctx context.Context, inst *instance, mach machine) {
	select {
	case <-mach.Done():
	case <-ctx.Done():
		return
	}
	// The process has ended: Wait only collects the status and removes
	// the sockets (and, for a VMM the launcher placed, its jail).
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	st, err := mach.Wait(wctx)
	cancel()
	attrs := exitAttrs(st)
	// A re-adopted VMM has no launcher cleanup attached: remove its jail
	// here (idempotent for a VMM whose own cleanup already did).
	if err := m.place.ReleaseWorkspace(inst.id, inst.limits); err != nil {
		attrs["error"] = err.Error()
	}
	inst.mu.Lock()
	if s := inst.rec.State; s != StateReady && s != StateRunning {
		inst.mu.Unlock()
		return // a stop is in progress and handles the exit
	}
	inst.vm = nil
	inst.rec.Process.PID = 0
	inst.rec.StoppedAt = m.now()
	to := StateFailed
	switch {
	case err != nil:
		inst.rec.FailureReason = fmt.Sprintf("the VMM exited unexpectedly (%v)", err)
	case st.Known && st.Signal == 0 && st.Code == 0:
		to = StateStopped
		inst.rec.FailureReason = "the VMM exited on its own with exit status 0 (the guest shut down)"
	default:
		inst.rec.FailureReason = fmt.Sprintf("the VMM exited unexpectedly (%s)", st)
	}
	attrs["reason"] = inst.rec.FailureReason
	m.transitionLocked(inst, to, ActionExited, attrs)
	inst.mu.Unlock()
	m.flushLogged(ctx, inst)
	inst.log.Warn("VMM exited on its own", "status", st.String(), "state", string(to))
}

// boot starts the VMM (a boot or a restore, named by what) and records the
// outcome: READY (ok true, the machine returned for watching) or FAILED.
// When a Stop or Remove took the sandbox over meanwhile, the machine (if
// any) is handed to it.
func (m *Manager) boot(ctx context.Context, inst *instance, what string, startVM startFunc) (machine, bool) {
	bctx, cancel := context.WithTimeout(ctx, m.cfg.BootTimeout)
	defer cancel()
	start := m.now()
	mach, err := startVM(bctx)
	if err == nil {
		m.crash(what + ".started")
	}
	var jailErr error
	if err != nil {
		// Nothing runs: the jail goes (a failed launch removed it already).
		jailErr = m.place.ReleaseWorkspace(inst.id, inst.limits)
	}
	inst.mu.Lock()
	if inst.rec.State != StateStarting {
		inst.vm = mach // may be nil; the stop in progress deals with it
		inst.mu.Unlock()
		return nil, false
	}
	if err != nil {
		reason := err.Error()
		if errors.Is(bctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
			reason = fmt.Sprintf("%s did not finish within %v: %v", what, m.cfg.BootTimeout, err)
		}
		if jailErr != nil {
			reason = fmt.Sprintf("%s (and %v)", reason, jailErr)
		}
		inst.rec.FailureReason = reason
		inst.rec.StoppedAt = m.now()
		m.transitionLocked(inst, StateFailed, ActionFailed, map[string]string{"reason": reason})
		inst.mu.Unlock()
		m.flushLogged(ctx, inst)
		inst.log.Error(what+" failed", "error", reason)
		return nil, false
	}
	inst.vm = mach
	inst.rec.ReadyAt = m.now()
	inst.rec.Process.PID = mach.Pid()
	inst.pidStart = mach.StartTime()
	ready := inst.rec.ReadyAt.Sub(start)
	m.transitionLocked(inst, StateReady, ActionReady, map[string]string{
		"pid": strconv.Itoa(mach.Pid()), what + "_ms": strconv.FormatInt(ready.Milliseconds(), 10),
	})
	inst.mu.Unlock()
	m.flushLogged(ctx, inst)
	inst.log.Info("sandbox ready", "pid", mach.Pid(), what+"_time", ready)
	return mach, true
}

// networkOf converts an attachment into the record's network identity.
func networkOf(a network.Attachment) Network {
	dns := make([]string, 0, len(a.DNS))
	for _, d := range a.DNS {
		dns = append(dns, d.String())
	}
	return Network{
		TAP: a.TAP, MAC: a.GuestMAC, IP: a.IP.String(), Gateway: a.Gateway.String(), DNS: dns,
		Netns: a.Netns, GuestIP: a.GuestIP.String(), PrefixLen: a.PrefixLen,
	}
}

// exitAttrs describes an exit status as event attributes.
func exitAttrs(st vmm.ExitStatus) map[string]string {
	a := map[string]string{"exit_status": st.String()}
	if st.Known {
		if st.Signal != 0 {
			a["signal"] = st.Signal.String()
		} else {
			a["exit_code"] = strconv.Itoa(st.Code)
		}
	}
	return a
}

// publishLocked publishes an event about inst in its current state and
// marks the record for the store. inst.mu must be held, which keeps each
// sandbox's events in order; the caller flushes the record once it has
// released inst.mu (before an RPC returns, so that the change it made is
// durable). A daemon that dies in between loses no state Recover cannot
// rebuild: a ready VMM whose record still says starting is found by its
// directory and re-adopted.
func (m *Manager) publishLocked(inst *instance, action string, attrs map[string]string) {
	m.events.Publish(events.Event{
		SandboxID: inst.id, Action: action, State: string(inst.rec.State), Time: m.now(), Attributes: attrs,
	})
	inst.markLocked()
}

// transitionLocked moves inst to state to and publishes action (the caller
// flushes). A move the state machine forbids is a bug: it is logged and
// refused. inst.mu must be held.
func (m *Manager) transitionLocked(inst *instance, to State, action string, attrs map[string]string) bool {
	from := inst.rec.State
	if !allowed(from, to) {
		inst.log.Error("refused state transition (bug)", "from", string(from), "to", string(to), "action", action)
		return false
	}
	inst.rec.State = to
	m.publishLocked(inst, action, attrs)
	inst.log.Debug("state changed", "from", string(from), "to", string(to), "action", action)
	return true
}
