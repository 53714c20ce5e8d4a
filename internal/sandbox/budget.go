package sandbox

import (
	"fmt"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// usage is an amount of the host-wide budget: vCPUs and guest memory.
type usage struct{ vcpus, memoryMiB int }

func (u *usage) add(l vmm.Limits)    { u.vcpus += l.VCPUs; u.memoryMiB += l.MemoryMiB }
func (u *usage) remove(l vmm.Limits) { u.vcpus -= l.VCPUs; u.memoryMiB -= l.MemoryMiB }

// reserveBudget takes l from the host-wide budget (Config.MaxTotalVCPUs
// and MaxTotalMemoryMiB) for a sandbox being created or restored, or
// fails with ResourceExhausted. The budget counts the reservations of
// creates and restores in progress and every registered sandbox in a
// state that holds (or is about to hold) a VMM: starting, ready, running
// and stopping. Stopped and failed sandboxes hold no VM and count for
// nothing (nothing starts them again). Sandboxes a previous daemon left
// running count once Recover has taken them over; they are never refused.
//
// Reservations are serialized by the admission lock, so concurrent
// creates cannot pass the budget together; a sandbox that ends or goes
// meanwhile only makes the sum briefly too high. The reservation is given
// back with unreserveBudget, or becomes the registered sandbox's share in
// register.
func (m *Manager) reserveBudget(l vmm.Limits) error {
	m.admit.Lock()
	defer m.admit.Unlock()
	m.mu.Lock()
	used := m.reservedUse
	insts := make([]*instance, 0, len(m.sandboxes))
	for _, inst := range m.sandboxes {
		insts = append(insts, inst)
	}
	m.mu.Unlock()
	maxVCPUs, maxMem := m.cfg.MaxTotalVCPUs, m.cfg.MaxTotalMemoryMiB
	if maxVCPUs > 0 || maxMem > 0 {
		// Each sandbox's mu is taken on its own, after the registry
		// lock was released (the lock order puts mu first).
		for _, inst := range insts {
			inst.mu.Lock()
			live := !inst.removed && !inst.rec.State.Final()
			inst.mu.Unlock()
			if live {
				used.add(inst.limits)
			}
		}
		switch {
		case maxVCPUs > 0 && used.vcpus+l.VCPUs > maxVCPUs:
			return fmt.Errorf("the host's budget of %d vCPUs is spent (%d in use, %d asked for); stop or remove sandboxes first: %w",
				maxVCPUs, used.vcpus, l.VCPUs, errdefs.ErrResourceExhausted)
		case maxMem > 0 && used.memoryMiB+l.MemoryMiB > maxMem:
			return fmt.Errorf("the host's budget of %d MiB of guest memory is spent (%d MiB in use, %d MiB asked for); stop or remove sandboxes first: %w",
				maxMem, used.memoryMiB, l.MemoryMiB, errdefs.ErrResourceExhausted)
		}
	}
	m.mu.Lock()
	m.reservedUse.add(l)
	m.mu.Unlock()
	return nil
}

// unreserveBudget gives back a reservation of reserveBudget.
func (m *Manager) unreserveBudget(l vmm.Limits) {
	m.mu.Lock()
	m.reservedUse.remove(l)
	m.mu.Unlock()
}
