package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/events"
	"github.com/firecracker-vmm/firecracker-vmm/internal/store"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// killStrayVMMs kills every VMM process whose pid is not in keep (the
// re-adopted VMMs): a VMM whose boot the daemon died in, or one that no
// longer answers for its sandbox. VMMs are the processes working in a
// sandbox directory whose command line carries "--id <that sandbox>" and
// the processes the launcher finds in a workspace outside the sandbox
// directories (a jail's cgroups).
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
	for _, id := range m.workspaceIDs() {
		pids, err := m.place.FindVMMs(id, "")
		if err != nil {
			m.log.Error("listing the VMMs of a workspace", "sandbox", id, "error", err)
			continue
		}
		for _, pid := range pids {
			if keep[pid] {
				continue
			}
			inWorkspace := func(pid int) bool {
				now, err := m.place.FindVMMs(id, "")
				return err == nil && slices.Contains(now, pid)
			}
			kctx, cancel := context.WithTimeout(ctx, adoptTimeout)
			err := vmm.KillVerified(kctx, pid, inWorkspace)
			cancel()
			if err != nil {
				m.log.Error("killing a stray jailed VMM", "sandbox", id, "pid", pid, "error", err)
				continue
			}
			m.log.Warn("killed a jailed VMM process no sandbox owns", "sandbox", id, "pid", pid)
		}
	}
}

// workspaceIDs lists the sandbox ids that have a workspace outside their
// directory (a jail; none unjailed).
func (m *Manager) workspaceIDs() []string {
	ids, err := m.place.Workspaces()
	if err != nil {
		m.log.Error("listing workspaces (jails)", "error", err)
		return nil
	}
	return slices.DeleteFunc(ids, func(id string) bool { return !ValidID(id) })
}

// finishRemoval completes a removal the daemon died in: it releases what
// the sandbox held, deletes its record and publishes the removed event.
func (m *Manager) finishRemoval(ctx context.Context, r store.SandboxRecord) {
	log := m.log.With("sandbox", r.ID)
	limits := vmm.Limits{VCPUs: r.Hardware.VCPUs, MemoryMiB: r.Hardware.MemoryMiB}
	if err := m.releaseAll(ctx, r.ID, limits, filepath.Join(m.sandboxesDir, r.ID)); err != nil {
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
	for _, id := range m.workspaceIDs() {
		if known[id] {
			continue
		}
		if err := m.place.ReleaseWorkspace(id, strayJailLimits); err != nil {
			m.log.Error("removing a stray jail", "sandbox", id, "error", err)
			continue
		}
		m.log.Warn("removed a jail no record owns", "sandbox", id)
	}
}
