package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/events"
	"github.com/firecracker-vmm/firecracker-vmm/internal/firecracker"
	"github.com/firecracker-vmm/firecracker-vmm/internal/store"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// adoptTimeout bounds the check of one recorded VMM's API socket.
const adoptTimeout = 3 * time.Second

// reasonDiedWhileDown is the failure reason of a sandbox whose VMM was gone
// when the daemon started again.
const reasonDiedWhileDown = "the VMM died while the daemon was down"

// Recover reloads the registry from Config.Store; the daemon calls it once,
// before serving. Each sandbox whose VMM still runs (same pid, same process
// start time, and its API socket answers GET / with the sandbox's id) is
// re-adopted in its recorded state and watched again; one left paused by an
// interrupted checkpoint is resumed. A sandbox whose VMM is gone moves to
// stopped (failed if it was starting) with an event; like any stopped
// sandbox it keeps its record, directory and address until the user
// removes it. A removal that was under way is finished. TTLs are re-armed
// with the time left, and sandboxes whose TTL ran out meanwhile are
// removed. Leases are taken back, and what no record owns is removed, each
// logged: VMM processes running in a sandbox directory or jail (a boot the
// daemon died in), sandbox directories, namespaces and jails. Without a
// store Recover does nothing.
func (m *Manager) Recover(ctx context.Context) error {
	recs, err := m.cfg.Store.ListSandboxes(ctx)
	if err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	known := map[string]bool{}
	type found struct {
		rec  store.SandboxRecord
		mach machine
	}
	var live []found
	var removing []store.SandboxRecord
	keep := map[int]bool{}
	for _, r := range recs {
		if !ValidID(r.ID) {
			m.log.Error("ignoring a stored sandbox with an invalid id", "sandbox", r.ID)
			continue
		}
		known[r.ID] = true
		if r.Removing {
			removing = append(removing, r)
			continue
		}
		f := found{rec: r}
		switch state := State(r.State); {
		case !state.Final() && r.Process.PID > 0:
			if f.mach, err = m.adopt(ctx, r); err != nil {
				m.log.Warn("the recorded VMM is gone", "sandbox", r.ID, "pid", r.Process.PID, "error", err)
			}
		case state == StateStarting:
			if f.mach, err = m.adoptBooted(ctx, r); err != nil {
				m.log.Warn("the boot the daemon died in did not finish", "sandbox", r.ID, "error", err)
			}
		}
		if f.mach != nil {
			keep[f.mach.Pid()] = true
		}
		live = append(live, f)
	}
	// Before any jail or directory goes: no VMM runs in it any more.
	m.killStrayVMMs(ctx, keep)
	for _, r := range removing {
		m.finishRemoval(ctx, r)
	}
	var expired []string
	for _, f := range live {
		inst := m.recoverOne(ctx, f.rec, f.mach)
		inst.mu.Lock()
		if !inst.rec.ExpiresAt.IsZero() {
			left := inst.rec.ExpiresAt.Sub(m.now())
			if left <= 0 {
				expired = append(expired, inst.id)
			} else {
				id := inst.id
				inst.ttl = time.AfterFunc(left, func() { m.expire(id) })
			}
		}
		inst.mu.Unlock()
	}
	for _, id := range expired {
		m.log.Info("sandbox TTL ran out while the daemon was down", "sandbox", id)
		m.expire(id)
	}
	m.removeStrays(ctx, known)
	return nil
}

// killStrayVMMs kills every VMM process whose pid is not in keep (the
// re-adopted VMMs): a VMM whose boot the daemon died in, or one that no
// longer answers for its sandbox. VMMs are the processes working in a
// sandbox directory whose command line carries "--id <that sandbox>" and,
// under the jailer, the processes in a jail's cgroups.
func (m *Manager) killStrayVMMs(ctx context.Context, keep map[int]bool) {
	match := func(pid int, cwd string) bool {
		id := filepath.Base(cwd)
		return filepath.Dir(cwd) == m.sandboxesDir && ValidID(id) && vmm.HasInstanceID(pid, id)
	}
	killed, err := vmm.KillStrays(ctx, match, keep)
	for pid, cwd := range killed {
		m.log.Warn("killed a VMM process no sandbox owns", "pid", pid, "dir", cwd)
	}
	if err != nil {
		m.log.Error("killing stray VMM processes", "error", err)
	}
	for _, id := range m.jailIDs() {
		pids, err := m.jailer.Processes(id)
		if err != nil {
			m.log.Error("listing the processes of a jail", "sandbox", id, "error", err)
			continue
		}
		for _, pid := range pids {
			if keep[pid] {
				continue
			}
			inJail := func(pid int) bool {
				now, err := m.jailer.Processes(id)
				return err == nil && slices.Contains(now, pid)
			}
			kctx, cancel := context.WithTimeout(ctx, adoptTimeout)
			err := vmm.KillVerified(kctx, pid, inJail)
			cancel()
			if err != nil {
				m.log.Error("killing a stray jailed VMM", "sandbox", id, "pid", pid, "error", err)
				continue
			}
			m.log.Warn("killed a jailed VMM process no sandbox owns", "sandbox", id, "pid", pid)
		}
	}
}

// jailIDs lists the sandbox ids that have a jail directory (none without a
// jailer).
func (m *Manager) jailIDs() []string {
	if m.jailer == nil {
		return nil
	}
	dir, err := m.jailer.JailsDir()
	if err != nil {
		m.log.Error("finding the jails directory", "error", err)
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			m.log.Error("listing jails", "dir", dir, "error", err)
		}
		return nil
	}
	var ids []string
	for _, e := range entries {
		if e.IsDir() && ValidID(e.Name()) {
			ids = append(ids, e.Name())
		}
	}
	return ids
}

// finishRemoval completes a removal the daemon died in: it releases what
// the sandbox held, deletes its record and publishes the removed event.
func (m *Manager) finishRemoval(ctx context.Context, r store.SandboxRecord) {
	log := m.log.With("sandbox", r.ID)
	limits := vmm.Limits{VCPUs: r.Hardware.VCPUs, MemoryMiB: r.Hardware.MemoryMiB}
	if err := m.releaseAll(ctx, r.ID, limits, r.Dir); err != nil {
		log.Error("finishing an interrupted removal", "error", err)
		return // the record stays; the next start tries again
	}
	if err := m.cfg.Store.DeleteSandbox(ctx, r.ID); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		log.Error("deleting the record of a removed sandbox", "error", err)
		return
	}
	m.events.Publish(events.Event{
		SandboxID: r.ID, Action: ActionRemoved, State: r.State, Time: m.now(),
		Attributes: map[string]string{"reason": "removal finished after a daemon restart"},
	})
	log.Warn("finished a removal the daemon was interrupted in")
}

// recoverOne registers the sandbox of one record; mach is its re-adopted
// VMM, or nil when none runs.
func (m *Manager) recoverOne(ctx context.Context, r store.SandboxRecord, mach machine) *instance {
	log := m.log.With("sandbox", r.ID)
	inst := &instance{
		id: r.ID, op: make(chan struct{}, 1), cancel: func() {}, done: make(chan struct{}), log: log,
		rec: sandboxOf(r), limits: vmm.Limits{VCPUs: r.Hardware.VCPUs, MemoryMiB: r.Hardware.MemoryMiB},
		pidStart: r.Process.PIDStartTime,
	}
	if r.Network.IP != "" {
		if ip, err := netip.ParseAddr(r.Network.IP); err != nil {
			log.Error("stored address", "ip", r.Network.IP, "error", err)
		} else if err := m.cfg.Network.Reserve(r.ID, ip); err != nil {
			log.Error("taking back the address lease", "ip", ip, "error", err)
		}
	}

	state := inst.rec.State
	live := mach != nil && (state == StateReady || state == StateRunning || state == StateStarting)
	attrs := map[string]string{"reason": reasonDiedWhileDown}
	if mach != nil && !live && !state.Final() {
		// Caught half-way through a stop: finish it by killing the VMM.
		st, err := mach.Kill(context.WithoutCancel(ctx))
		if err != nil {
			log.Error("killing the VMM of an interrupted stop", "error", err)
		}
		attrs = exitAttrs(st)
		attrs["reason"] = "the daemon stopped during a stop; the VMM was killed"
	}
	var pidStart uint64
	if live && state == StateStarting {
		pidStart, _ = vmm.ProcessStartTime(mach.Pid())
	}

	inst.mu.Lock()
	m.mu.Lock()
	m.sandboxes[inst.id] = inst
	m.mu.Unlock()
	switch {
	case state.Final():
		close(inst.done)
		inst.mu.Unlock()
		log.Info("sandbox recovered", "state", string(state))
		return inst
	case live:
		if state == StateStarting {
			// The boot finished while the daemon died: record it now.
			inst.rec.ReadyAt = m.now()
			inst.rec.Process.PID = mach.Pid()
			inst.pidStart = pidStart
			m.transitionLocked(inst, StateReady, ActionReady, map[string]string{
				"pid": strconv.Itoa(mach.Pid()), "reason": "the boot finished while the daemon was down",
			})
			state = StateReady
		}
		runCtx, cancel := context.WithCancel(m.baseCtx)
		inst.cancel = cancel
		inst.vm = mach
		m.mu.Lock()
		m.wg.Add(1)
		m.mu.Unlock()
		inst.mu.Unlock()
		m.flushLogged(ctx, inst)
		go func() {
			defer m.wg.Done()
			defer close(inst.done)
			m.watch(runCtx, inst, mach)
		}()
		log.Info("sandbox re-adopted", "state", string(state), "pid", mach.Pid())
		return inst
	}
	// Dead, or caught half-way (starting or stopping): nothing runs any
	// more.
	close(inst.done)
	to, action := StateStopped, ActionExited
	switch state {
	case StateStarting:
		to, action = StateFailed, ActionFailed
	case StateStopping:
		action = ActionStopped
	}
	inst.rec.Process.PID = 0
	inst.pidStart = 0
	inst.rec.StoppedAt = m.now()
	inst.rec.FailureReason = attrs["reason"]
	m.transitionLocked(inst, to, action, attrs)
	inst.mu.Unlock()
	m.flushLogged(ctx, inst)
	// The network stays held, as for any stopped sandbox: Remove releases
	// it together with the record and its lease.
	if err := m.releaseJail(inst.id, inst.limits); err != nil {
		log.Error("removing the jail of a dead sandbox", "error", err)
	}
	log.Warn("sandbox's VMM died while the daemon was down", "was", string(state), "now", string(to))
	return inst
}

// adopt re-attaches a recorded VMM: its pid must be alive with the recorded
// start time, and its API socket must answer GET / with the sandbox's id.
func (m *Manager) adopt(ctx context.Context, r store.SandboxRecord) (machine, error) {
	pid := r.Process.PID
	st, err := vmm.ProcessStartTime(pid)
	if err != nil {
		return nil, err
	}
	if st != r.Process.PIDStartTime {
		return nil, fmt.Errorf("pid %d was reused (start time %d, recorded %d)", pid, st, r.Process.PIDStartTime)
	}
	mach, _, err := m.attach(ctx, r, pid)
	return mach, err
}

// adoptBooted looks for the VMM of a sandbox recorded as starting: a boot
// (or restore) that finished while the daemon died, before its pid was
// recorded. The VMM is the one process working in the sandbox's directory
// (or, jailed, in its jail's cgroups); it is adopted when its API socket answers with the
// sandbox's id and a running VM. Anything else is left to killStrayVMMs.
func (m *Manager) adoptBooted(ctx context.Context, r store.SandboxRecord) (machine, error) {
	dir := r.Dir
	if r.Process.Jailed {
		dir = r.Process.Chroot
	}
	if dir == "" {
		return nil, errors.New("no directory recorded")
	}
	var pids []int
	var err error
	if r.Process.Jailed && m.jailer != nil {
		pids, err = m.jailer.Processes(r.ID)
	} else {
		pids, err = vmm.FindByCwd(func(pid int, cwd string) bool { return cwd == dir && vmm.HasInstanceID(pid, r.ID) })
	}
	if err != nil {
		return nil, err
	}
	if len(pids) != 1 {
		return nil, fmt.Errorf("%d processes run in %s", len(pids), dir)
	}
	mach, info, err := m.attach(ctx, r, pids[0])
	if err != nil {
		return nil, err
	}
	if info.State != firecracker.StateRunning {
		_ = mach.Close()
		return nil, fmt.Errorf("pid %d: the VM is %q, not running: its boot did not finish", pids[0], info.State)
	}
	return mach, nil
}

// attach takes a handle on process pid, which must be the VMM of r: its API
// socket must answer GET / with r's id. A VM left paused by an interrupted
// checkpoint is resumed (unless r was being stopped).
func (m *Manager) attach(ctx context.Context, r store.SandboxRecord, pid int) (machine, firecracker.InstanceInfo, error) {
	proc, err := vmm.Attach(pid)
	if err != nil {
		return nil, firecracker.InstanceInfo{}, err
	}
	client := firecracker.NewClient(r.Process.APISocket)
	fail := func(err error) (machine, firecracker.InstanceInfo, error) {
		client.Close()
		_ = proc.Close()
		return nil, firecracker.InstanceInfo{}, fmt.Errorf("pid %d, API socket %s: %w", pid, r.Process.APISocket, err)
	}
	cctx, cancel := context.WithTimeout(ctx, adoptTimeout)
	info, err := client.DescribeInstance(cctx)
	cancel()
	if err == nil && info.ID != r.ID {
		err = fmt.Errorf("the API socket answers for instance %q", info.ID)
	}
	if err != nil {
		return fail(err)
	}
	if info.State == firecracker.StatePaused && State(r.State) != StateStarting && State(r.State) != StateStopping {
		cctx, cancel := context.WithTimeout(ctx, adoptTimeout)
		err := client.Resume(cctx)
		cancel()
		if err != nil {
			return fail(fmt.Errorf("resuming the VM an interrupted checkpoint left paused: %w", err))
		}
		info.State = firecracker.StateRunning
		m.log.Warn("resumed a VM an interrupted checkpoint had left paused", "sandbox", r.ID, "pid", pid)
	}
	return vmMachine{&vmm.VM{
		ID: r.ID, Process: proc, Client: client, SocketPath: r.Process.APISocket,
		ConsolePath: r.Process.ConsolePath, LogPath: r.Process.LogPath, MetricsPath: r.Process.MetricsPath,
		VsockPath: r.Process.VsockPath,
	}}, info, nil
}

// removeStrays removes sandbox directories, jails and namespaces that no
// record owns, logging each.
func (m *Manager) removeStrays(ctx context.Context, known map[string]bool) {
	entries, err := os.ReadDir(m.sandboxesDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		m.log.Error("listing sandbox directories", "dir", m.sandboxesDir, "error", err)
	}
	for _, e := range entries {
		if known[e.Name()] {
			continue
		}
		dir := m.sandboxesDir + string(os.PathSeparator) + e.Name()
		if err := os.RemoveAll(dir); err != nil {
			m.log.Error("removing a stray sandbox directory", "dir", dir, "error", err)
			continue
		}
		m.log.Warn("removed a sandbox directory no record owns", "dir", dir)
	}
	m.removeStrayJails(known)
	ids, err := m.cfg.Network.ListNetns()
	if err != nil {
		m.log.Error("listing sandbox namespaces", "error", err)
		return
	}
	slices.Sort(ids)
	for _, id := range ids {
		if known[id] {
			continue
		}
		if err := m.cfg.Network.Detach(ctx, id); err != nil {
			m.log.Error("removing a stray sandbox network", "sandbox", id, "error", err)
			continue
		}
		m.log.Warn("removed a sandbox network no record owns", "sandbox", id)
	}
}

// strayJailLimits name every cgroup controller a jail may have been given,
// so that the cleanup of a jail whose limits are unknown removes them all.
var strayJailLimits = vmm.Limits{VCPUs: 1, MemoryMiB: 1}

// removeStrayJails removes the jails (and their cgroups) of sandbox ids no
// record owns. Only names that are sandbox ids are touched: the chroot base
// directory may hold other jails.
func (m *Manager) removeStrayJails(known map[string]bool) {
	for _, id := range m.jailIDs() {
		if known[id] {
			continue
		}
		if err := m.jailer.Cleanup(id, strayJailLimits); err != nil {
			m.log.Error("removing a stray jail", "sandbox", id, "error", err)
			continue
		}
		m.log.Warn("removed a jail no record owns", "sandbox", id)
	}
}
