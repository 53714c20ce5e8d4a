package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/firecracker"
	"github.com/firecracker-vmm/firecracker-vmm/internal/store"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// leaseReserver is implemented by a Networker that can take back an
// address lease after a restart (*network.Manager).
type leaseReserver interface {
	Reserve(sandboxID string, ip netip.Addr) error
}

// netnsLister is implemented by a Networker that can list the sandbox
// namespaces it finds on the host (*network.Manager).
type netnsLister interface {
	ListNetns() ([]string, error)
}

// adoptTimeout bounds the check of one recorded VMM's API socket.
const adoptTimeout = 3 * time.Second

// reasonDiedWhileDown is the failure reason of a sandbox whose VMM was gone
// when the daemon started again.
const reasonDiedWhileDown = "the VMM died while the daemon was down"

// Recover reloads the registry from Config.Store; the daemon calls it once,
// before serving. Each sandbox whose VMM still runs (same pid, same process
// start time, and its API socket answers GET / with the sandbox's id) is
// re-adopted in its recorded state and watched again. A sandbox whose VMM
// is gone moves to stopped (failed if it was starting) with an event; like
// any stopped sandbox it keeps its record, directory and address until the
// user removes it. TTLs are re-armed with the time left, and sandboxes whose TTL ran
// out meanwhile are removed. Leases are taken back, and sandbox
// directories and namespaces that no record owns are removed, each logged.
// Without a store Recover does nothing.
func (m *Manager) Recover(ctx context.Context) error {
	if m.cfg.Store == nil {
		return nil
	}
	recs, err := m.cfg.Store.ListSandboxes(ctx)
	if err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	known := map[string]bool{}
	var expired []string
	for _, r := range recs {
		known[r.ID] = true
		inst := m.recoverOne(ctx, r)
		if inst == nil {
			continue
		}
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

// recoverOne registers the sandbox of one record, re-adopting its VMM when
// it still runs.
func (m *Manager) recoverOne(ctx context.Context, r store.SandboxRecord) *instance {
	log := m.log.With("sandbox", r.ID)
	if !ValidID(r.ID) {
		log.Error("ignoring a stored sandbox with an invalid id")
		return nil
	}
	inst := &instance{
		id: r.ID, op: make(chan struct{}, 1), cancel: func() {}, done: make(chan struct{}), log: log,
		rec: sandboxOf(r), limits: vmm.Limits{VCPUs: r.Hardware.VCPUs, MemoryMiB: r.Hardware.MemoryMiB},
		pidStart: r.Process.PIDStartTime,
	}
	if r.Network.IP != "" && m.cfg.Network != nil {
		if res, ok := m.cfg.Network.(leaseReserver); ok {
			if ip, err := netip.ParseAddr(r.Network.IP); err != nil {
				log.Error("stored address", "ip", r.Network.IP, "error", err)
			} else if err := res.Reserve(r.ID, ip); err != nil {
				log.Error("taking back the address lease", "ip", ip, "error", err)
			}
		}
	}

	var mach machine
	state := inst.rec.State
	if !state.Final() && r.Process.PID > 0 {
		var err error
		if mach, err = m.adopt(ctx, r); err != nil {
			log.Warn("the recorded VMM is gone", "pid", r.Process.PID, "error", err)
		}
	}

	inst.mu.Lock()
	defer inst.mu.Unlock()
	m.mu.Lock()
	m.sandboxes[inst.id] = inst
	m.mu.Unlock()

	switch {
	case state.Final():
		close(inst.done)
		log.Info("sandbox recovered", "state", string(state))
	case mach != nil && (state == StateReady || state == StateRunning):
		runCtx, cancel := context.WithCancel(m.baseCtx)
		inst.cancel = cancel
		inst.vm = mach
		m.mu.Lock()
		m.wg.Add(1)
		m.mu.Unlock()
		go func() {
			defer m.wg.Done()
			defer close(inst.done)
			m.watch(runCtx, inst, mach)
		}()
		log.Info("sandbox re-adopted", "state", string(state), "pid", mach.Pid())
	default:
		// Dead, or caught half-way (starting or stopping): nothing runs
		// any more, or what runs is killed.
		close(inst.done)
		attrs := map[string]string{"reason": reasonDiedWhileDown}
		if mach != nil {
			st, err := mach.Kill(context.WithoutCancel(ctx))
			if err != nil {
				log.Error("killing the VMM of an interrupted stop", "error", err)
			}
			attrs = exitAttrs(st)
			attrs["reason"] = "the daemon stopped during a stop; the VMM was killed"
		}
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
		// The network stays held, as for any stopped sandbox: Remove
		// releases it together with the record and its lease.
		if err := m.releaseJail(inst.id, inst.limits); err != nil {
			log.Error("removing the jail of a dead sandbox", "error", err)
		}
		log.Warn("sandbox's VMM died while the daemon was down", "was", string(state), "now", string(to))
	}
	return inst
}

// adopt re-attaches a recorded VMM: its pid must be alive with the recorded
// start time, and its API socket must answer GET / with the sandbox's id.
func (m *Manager) adopt(ctx context.Context, r store.SandboxRecord) (machine, error) {
	pid := r.Process.PID
	st, err := store.ProcessStartTime(pid)
	if err != nil {
		return nil, err
	}
	if st != r.Process.PIDStartTime {
		return nil, fmt.Errorf("pid %d was reused (start time %d, recorded %d)", pid, st, r.Process.PIDStartTime)
	}
	proc, err := vmm.Attach(pid)
	if err != nil {
		return nil, err
	}
	client := firecracker.NewClient(r.Process.APISocket)
	cctx, cancel := context.WithTimeout(ctx, adoptTimeout)
	info, err := client.DescribeInstance(cctx)
	cancel()
	if err == nil && info.ID != r.ID {
		err = fmt.Errorf("the API socket answers for instance %q", info.ID)
	}
	if err != nil {
		client.Close()
		_ = proc.Close()
		return nil, fmt.Errorf("pid %d, API socket %s: %w", pid, r.Process.APISocket, err)
	}
	return vmMachine{&vmm.VM{
		ID: r.ID, Process: proc, Client: client, SocketPath: r.Process.APISocket,
		ConsolePath: r.Process.ConsolePath, LogPath: r.Process.LogPath, MetricsPath: r.Process.MetricsPath,
		VsockPath: r.Process.VsockPath,
	}}, nil
}

// removeStrays removes sandbox directories and namespaces that no record
// owns, logging each.
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
	lister, ok := m.cfg.Network.(netnsLister)
	if !ok || m.cfg.Network == nil {
		return
	}
	ids, err := lister.ListNetns()
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
