package sandbox

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/store"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// Recovery bounds.
const (
	// adoptTimeout bounds the adoption of one recorded VMM (identity
	// checks, GET /, and the resume of a VM an interrupted checkpoint left
	// paused).
	adoptTimeout = 3 * time.Second
	// adoptParallelism bounds how many recorded VMMs are adopted at once:
	// a host of VMMs that do not answer costs adoptTimeout per this many,
	// not per VMM.
	adoptParallelism = 64
)

// reasonDiedWhileDown is the failure reason of a sandbox whose VMM was gone
// when the daemon started again.
const reasonDiedWhileDown = "the VMM died while the daemon was down"

// Recover reloads the registry from Config.Store; the daemon calls it once
// at start, while it answers every other call UNAVAILABLE. Each sandbox
// whose VMM still runs is re-adopted through the runtime's Adopt, the same
// seam Start and Restore use (pid, process start time, --id and the API
// socket's instance id must all match), in its recorded state, and
// watched again; one left paused by an interrupted checkpoint is resumed.
// VMMs are adopted concurrently (adoptParallelism at a time, each bounded
// by adoptTimeout). A sandbox whose VMM is gone moves to stopped (failed
// if it was starting) with an event; like any stopped sandbox it keeps its
// record, directory and address until the user removes it. A removal that
// was under way is finished. TTLs are re-armed with the time left, and
// sandboxes whose TTL ran out meanwhile are removed. Address leases are
// taken back from the records, and what no record owns is removed, each
// logged: VMM processes running in a sandbox directory or jail (a boot the
// daemon died in), sandbox directories, namespaces and jails.
func (m *Manager) Recover(ctx context.Context) error {
	recs, err := m.cfg.Store.ListSandboxes(ctx)
	if err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	known := map[string]bool{}
	var live, removing []store.SandboxRecord
	for _, r := range recs {
		if !ValidID(r.ID) {
			m.log.Error("ignoring a stored sandbox with an invalid id", "sandbox", r.ID)
			continue
		}
		known[r.ID] = true
		if r.Removing {
			removing = append(removing, r)
		} else {
			live = append(live, r)
		}
	}
	// Every path the daemon acts on is derived from the id, never taken
	// from the record: a record that names other paths is not adopted.
	untrusted := make([]string, len(live))
	for i := range live {
		live[i], untrusted[i] = m.ownPaths(live[i])
	}
	machs := m.adoptAll(ctx, live, untrusted)
	keep := map[int]bool{}
	for _, mach := range machs {
		if mach != nil {
			keep[mach.Pid()] = true
		}
	}
	// Before any jail or directory goes: no VMM runs in it any more.
	m.killStrayVMMs(ctx, keep)
	for _, r := range removing {
		m.finishRemoval(ctx, r)
	}
	var expired []string
	for i, r := range live {
		inst := m.recoverOne(ctx, r, machs[i], untrusted[i])
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

// adoptAll adopts the VMM of each record that should have one, at most
// adoptParallelism at a time, except those whose untrusted entry is set;
// machs[i] is recs[i]'s machine, nil when none runs (or none could be
// adopted).
func (m *Manager) adoptAll(ctx context.Context, recs []store.SandboxRecord, untrusted []string) []machine {
	machs := make([]machine, len(recs))
	sem := make(chan struct{}, adoptParallelism)
	var wg sync.WaitGroup
	for i, r := range recs {
		state := State(r.State)
		var adopt func(context.Context, store.SandboxRecord) (machine, error)
		switch {
		case untrusted[i] != "":
			continue
		case !state.Final() && r.Process.PID > 0:
			adopt = m.adoptRecorded
		case state == StateStarting:
			adopt = m.adoptBooted
		default:
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			actx, cancel := context.WithTimeout(ctx, adoptTimeout)
			defer cancel()
			mach, err := adopt(actx, r)
			if err != nil {
				m.log.Warn("no VMM to re-adopt", "sandbox", r.ID, "state", r.State, "pid", r.Process.PID, "error", err)
				return
			}
			machs[i] = mach
		})
	}
	wg.Wait()
	return machs
}

// ownPaths returns r with every path the daemon acts on (its directory,
// disk, API socket, console, log, metrics, vsock socket and chroot)
// derived from its id, the data dir and the launcher's layout, and, when
// r named any other path, why it cannot be trusted ("" when it named only
// its own).
func (m *Manager) ownPaths(r store.SandboxRecord) (store.SandboxRecord, string) {
	dir := filepath.Join(m.sandboxesDir, r.ID)
	ws, err := m.place.Layout(r.ID, dir, vmm.Limits{VCPUs: r.Hardware.VCPUs, MemoryMiB: r.Hardware.MemoryMiB})
	if err != nil {
		// Nothing can be checked: nothing recorded is used.
		r.Dir, r.Hardware.Disk = dir, filepath.Join(dir, DiskName)
		r.Process = store.ProcessRecord{}
		return r, fmt.Sprintf("its paths cannot be derived (%v); its VMM was not adopted", err)
	}
	own := processOf(ws)
	p := &r.Process
	// An empty path names nothing: it is no mismatch and gets the derived
	// one, except the vsock socket's (empty: the sandbox has none).
	checks := []struct {
		name      string
		got       *string
		want      string
		keepEmpty bool
	}{
		{"directory", &r.Dir, dir, false},
		{"disk", &r.Hardware.Disk, ws.Path(DiskName), false},
		{"API socket", &p.APISocket, own.APISocket, false},
		{"console", &p.ConsolePath, own.ConsolePath, false},
		{"log", &p.LogPath, own.LogPath, false},
		{"metrics", &p.MetricsPath, own.MetricsPath, false},
		{"vsock socket", &p.VsockPath, own.VsockPath, true},
		{"chroot", &p.Chroot, own.Chroot, false},
	}
	var bad []string
	for _, c := range checks {
		switch {
		case *c.got == c.want || (*c.got == "" && c.keepEmpty):
		case *c.got == "":
			*c.got = c.want
		default:
			bad = append(bad, fmt.Sprintf("%s %s, not %s", c.name, strconv.Quote(*c.got), strconv.Quote(c.want)))
			*c.got = c.want
		}
	}
	if p.Jailed != own.Jailed {
		bad = append(bad, fmt.Sprintf("jailed %v, not %v", p.Jailed, own.Jailed))
		p.Jailed = own.Jailed
	}
	if len(bad) == 0 {
		return r, ""
	}
	return r, fmt.Sprintf("its stored record names paths that are not its own (%s); its VMM was not adopted",
		strings.Join(bad, "; "))
}

// adoptSpec is what r knows of its VMM; r's paths are its own (ownPaths).
func (m *Manager) adoptSpec(r store.SandboxRecord, pid int, startTime uint64) vmm.AdoptSpec {
	return vmm.AdoptSpec{
		ID: r.ID, PID: pid, PIDStartTime: startTime, Dir: filepath.Join(m.sandboxesDir, r.ID),
		APISocket: r.Process.APISocket, ConsolePath: r.Process.ConsolePath, LogPath: r.Process.LogPath,
		MetricsPath: r.Process.MetricsPath, VsockPath: r.Process.VsockPath,
		TrackDirtyPages: r.Hardware.TrackDirtyPages,
		Limits:          &vmm.Limits{VCPUs: r.Hardware.VCPUs, MemoryMiB: r.Hardware.MemoryMiB},
	}
}

// adoptRecorded re-adopts the VMM r records (pid and start time); a VM
// that an interrupted checkpoint left paused is resumed.
func (m *Manager) adoptRecorded(ctx context.Context, r store.SandboxRecord) (machine, error) {
	mach, err := m.rt.Adopt(ctx, m.adoptSpec(r, r.Process.PID, r.Process.PIDStartTime))
	if err != nil {
		return nil, err
	}
	if _, err := m.resumeAdopted(ctx, r, mach); err != nil {
		_ = mach.Close()
		return nil, err
	}
	return mach, nil
}

// adoptBooted looks for the VMM of a sandbox recorded as starting: a boot
// (or restore) that finished while the daemon died, before its pid was
// recorded. The VMM is the one process the launcher finds for the sandbox
// (working in its directory with its --id, or in its jail's cgroups); it
// is adopted when it answers with the sandbox's id and a running VM.
// Anything else is left to killStrayVMMs.
func (m *Manager) adoptBooted(ctx context.Context, r store.SandboxRecord) (machine, error) {
	pids, err := m.place.FindVMMs(r.ID, filepath.Join(m.sandboxesDir, r.ID))
	if err != nil {
		return nil, err
	}
	if len(pids) != 1 {
		return nil, fmt.Errorf("%d VMM processes found, want 1", len(pids))
	}
	st, err := vmm.ProcessStartTime(pids[0])
	if err != nil {
		return nil, err
	}
	mach, err := m.rt.Adopt(ctx, m.adoptSpec(r, pids[0], st))
	if err != nil {
		return nil, err
	}
	state, err := m.resumeAdopted(ctx, r, mach)
	if err == nil && state != vmm.StateRunning {
		err = fmt.Errorf("pid %d: the VM is %q, not running: its boot did not finish", pids[0], state)
	}
	if err != nil {
		_ = mach.Close()
		return nil, err
	}
	return mach, nil
}

// resumeAdopted resumes an adopted VM that an interrupted checkpoint left
// paused (unless r was starting or stopping) and returns the VM's state.
func (m *Manager) resumeAdopted(ctx context.Context, r store.SandboxRecord, mach machine) (vmm.InstanceState, error) {
	info, err := mach.Describe(ctx)
	if err != nil {
		return "", err
	}
	if info.State != vmm.StatePaused || State(r.State) == StateStarting || State(r.State) == StateStopping {
		return info.State, nil
	}
	if err := mach.Resume(ctx); err != nil {
		return info.State, fmt.Errorf("resuming the VM an interrupted checkpoint left paused: %w", err)
	}
	m.log.Warn("resumed a VM an interrupted checkpoint had left paused", "sandbox", r.ID, "pid", mach.Pid())
	return vmm.StateRunning, nil
}

// recoverOne registers the sandbox of one record; mach is its re-adopted
// VMM, or nil when none runs. untrusted, when set, says why the record's
// paths were not trusted (ownPaths): the sandbox was not adopted and, had
// it been live, fails with that reason.
func (m *Manager) recoverOne(ctx context.Context, r store.SandboxRecord, mach machine, untrusted string) *instance {
	log := m.log.With("sandbox", r.ID)
	inst := &instance{
		id: r.ID, op: make(chan struct{}, 1), cancel: func() {}, done: make(chan struct{}), log: log,
		rec: sandboxOf(r), limits: vmm.Limits{VCPUs: r.Hardware.VCPUs, MemoryMiB: r.Hardware.MemoryMiB},
		pidStart: r.Process.PIDStartTime,
	}
	if untrusted != "" {
		log.Error("sandbox record not trusted", "reason", untrusted)
	}
	var ip netip.Addr
	if r.Network.IP != "" {
		var err error
		if ip, err = netip.ParseAddr(r.Network.IP); err != nil {
			log.Error("stored address", "ip", r.Network.IP, "error", err)
		} else if err := m.cfg.Network.Reserve(r.ID, ip); err != nil {
			log.Error("taking back the address lease", "ip", ip, "error", err)
		}
	}

	state := inst.rec.State
	live := mach != nil && (state == StateReady || state == StateRunning || state == StateStarting)
	// A re-adopted VMM is only as good as its network: what the host lost
	// while the daemon was down is repaired, or the sandbox fails.
	var netErr error
	if live && ip.IsValid() {
		if netErr = m.cfg.Network.Verify(ctx, r.ID, ip); netErr != nil {
			log.Error("the re-adopted sandbox's network is lost", "error", netErr)
			live = false
		}
	}
	attrs := map[string]string{"reason": reasonDiedWhileDown}
	if mach != nil && !live && !state.Final() {
		// Caught half-way through a stop, or without its network: finish
		// it by killing the VMM.
		st, err := mach.Kill(context.WithoutCancel(ctx))
		if err != nil {
			log.Error("killing the VMM", "error", err)
		}
		attrs = exitAttrs(st)
		attrs["reason"] = "the daemon stopped during a stop; the VMM was killed"
		if netErr != nil {
			attrs["reason"] = fmt.Sprintf("its network was lost while the daemon was down (%v); the VMM was killed", netErr)
		}
	}

	inst.mu.Lock()
	m.mu.Lock()
	m.sandboxes[inst.id] = inst
	m.mu.Unlock()
	switch {
	case state.Final():
		close(inst.done)
		if untrusted != "" {
			inst.markLocked() // the store gets its own paths
		}
		inst.mu.Unlock()
		if untrusted != "" {
			m.flushLogged(ctx, inst)
		}
		log.Info("sandbox recovered", "state", string(state))
		return inst
	case live:
		if state == StateStarting {
			// The boot finished while the daemon died: record it now.
			inst.rec.ReadyAt = m.now()
			inst.rec.Process.PID = mach.Pid()
			inst.pidStart = mach.StartTime()
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
	if untrusted != "" && state != StateStopping {
		to, action = StateFailed, ActionFailed
		attrs = map[string]string{"reason": untrusted}
	}
	if netErr != nil {
		to, action = StateFailed, ActionFailed
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
	if err := m.place.ReleaseWorkspace(inst.id, inst.limits); err != nil {
		log.Error("removing the jail of a dead sandbox", "error", err)
	}
	log.Warn("sandbox's VMM died while the daemon was down", "was", string(state), "now", string(to))
	return inst
}
