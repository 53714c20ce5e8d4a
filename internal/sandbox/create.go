package sandbox

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/disk"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/network"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// Create validates req, registers a sandbox in StateStarting, prepares its
// directory and disk copy, and boots it in the background. It returns at
// once.
func (m *Manager) Create(ctx context.Context, req CreateRequest) (_ Sandbox, err error) {
	if err := ctx.Err(); err != nil {
		return Sandbox{}, fmt.Errorf("create: %w", err)
	}
	if m.isClosing() {
		return Sandbox{}, errShuttingDown()
	}
	p, err := m.validate(req)
	if err != nil {
		return Sandbox{}, fmt.Errorf("create: %w", err)
	}
	defer p.close()

	slot, err := m.claimSlot("create")
	if err != nil {
		return Sandbox{}, err
	}
	registered := false
	defer func() { slot.release(registered) }()
	id, dir, log := slot.id, slot.dir, slot.log
	m.crash(CrashCreateDir)
	limits := vmm.Limits{VCPUs: p.vcpus, MemoryMiB: p.memoryMiB}
	ws, err := slot.workspace(limits)
	if err != nil {
		return Sandbox{}, err
	}
	proc := processOf(ws)
	// The disk is cloned straight to where the VMM reads it (its chroot
	// under the jailer), from the descriptor that was checked.
	diskPath := ws.Path(DiskName)
	method, err := disk.CloneFile(ctx, p.rootfsFile, diskPath, disk.Options{NoSync: true})
	if err != nil {
		if ctx.Err() != nil {
			return Sandbox{}, fmt.Errorf("create: copying the rootfs: %w", ctx.Err())
		}
		return Sandbox{}, fmt.Errorf("create: copying the rootfs: %w", noSpace(err))
	}
	if err := ws.Own(diskPath); err != nil {
		return Sandbox{}, fmt.Errorf("create: %w", err)
	}
	log.Debug("rootfs copied", "source", p.rootfs, "disk", diskPath, "method", string(method))
	// So are the kernel and the initrd: Firecracker (or the jailer) is
	// given these files, relative to its working directory, and never
	// reopens a path from the request.
	kernel, initrd, err := placeBootFiles(ctx, ws, p, log)
	if err != nil {
		return Sandbox{}, err
	}
	m.crash(CrashCreateDisk)

	att, err := slot.attachNetwork(ctx)
	if err != nil {
		return Sandbox{}, err
	}
	m.crash(CrashCreateNetwork)

	rec := slot.record(p.labels, Hardware{
		VCPUs: p.vcpus, MemoryMiB: p.memoryMiB,
		Kernel: p.kernel, Initrd: p.initrd, Rootfs: p.rootfs, Disk: diskPath,
		BootArgs: p.bootArgs, TrackDirtyPages: p.trackDirtyPages,
	}, proc, p.ttl)
	spec := vmm.VMSpec{
		ID: id, Dir: dir, APISocket: rec.Process.APISocket, ConsolePath: rec.Process.ConsolePath,
		VCPUs: p.vcpus, MemoryMiB: p.memoryMiB, TrackDirtyPages: p.trackDirtyPages,
		Kernel: kernel, Initrd: initrd, BootArgs: p.bootArgs,
		// The kernel, the initrd, the drive and the vsock socket are relative to the VMM's working
		// directory (dir, or the jail's root), so that a snapshot of this
		// VM loads in another sandbox's directory, against that sandbox's
		// own files.
		Drives:  []vmm.DriveSpec{{ID: rootDriveID, Path: DiskName, Root: true}},
		Vsock:   &vmm.VsockSpec{CID: GuestCID, UDSPath: VsockName},
		Logging: vmm.LoggingSpec{LogPath: rec.Process.LogPath, MetricsPath: rec.Process.MetricsPath},
	}
	if att.TAP != "" {
		rec.Network = networkOf(att)
		spec.NICs = []vmm.NICSpec{{ID: network.NICID, HostDevName: att.TAP, GuestMAC: att.GuestMAC}}
		if spec.BootArgs, err = bootArgsWith(p.bootArgs, att.BootArg); err != nil {
			// Refused like any invalid request: release gives back the
			// lease and everything prepared so far.
			return Sandbox{}, fmt.Errorf("create: %w", err)
		}
		spec.NetNS = att.NetnsPath
		rec.Hardware.BootArgs = spec.BootArgs
	}
	inst := newInstance(rec, log, limits)
	attrs := map[string]string{"vcpus": strconv.Itoa(p.vcpus), "memory_mib": strconv.Itoa(p.memoryMiB)}
	out, registered, err := m.startNew(ctx, inst, ActionCreated, "boot", attrs, CrashCreateRecorded,
		func(ctx context.Context) (machine, error) { return m.rt.Start(ctx, spec) })
	if err != nil {
		return Sandbox{}, fmt.Errorf("create: %w", err)
	}
	log.Info("sandbox created", "vcpus", p.vcpus, "memory_mib", p.memoryMiB, "kernel", p.kernel,
		"rootfs", p.rootfs, "disk_method", string(method), "ttl", p.ttl)
	return out, nil
}

// newInstance returns the instance of a new sandbox in rec.State.
func newInstance(rec Sandbox, log *slog.Logger, limits vmm.Limits) *instance {
	return &instance{id: rec.ID, op: make(chan struct{}, 1), cancel: func() {}, done: make(chan struct{}), log: log,
		rec: rec, limits: limits}
}

// startNew registers a prepared sandbox (slot, directory, disk, jail and
// network in place; inst starting), publishes action (created or
// restored), starts the VMM in the background with start (what names it)
// and writes the sandbox's record. The boot runs while the record is
// fsync'd instead of after it, and startNew still returns only once the
// record is durable; until then it holds the sandbox's operation lock and
// its record writer (not inst.mu), so a Stop or Remove, and the store
// write of the boot's own ready, wait for the record. A daemon that dies
// before the record is durable leaves a VMM and a directory that Recover removes; after it, one that Recover
// adopts or fails (crash point recorded).
//
// registered tells the caller whether the registry took the sandbox over:
// if not, the caller releases what it prepared; if so and the record could
// not be written, startNew has removed the sandbox again (boot cancelled,
// everything released) and returns the error.
func (m *Manager) startNew(ctx context.Context, inst *instance, action, what string, attrs map[string]string,
	recorded string, start startFunc) (_ Sandbox, registered bool, _ error) {
	runCtx, cancel := context.WithCancel(m.baseCtx)
	inst.cancel = cancel
	inst.op <- struct{}{} // free: nobody else knows the sandbox yet
	defer inst.unlock()
	// The record writer is held until the new record is durable, so the
	// boot's own flushes (ready or failed) come after it; Get and List see
	// the sandbox meanwhile.
	inst.w.mu.Lock()
	inst.mu.Lock()
	if err := m.register(inst); err != nil {
		inst.mu.Unlock()
		inst.w.mu.Unlock()
		cancel()
		return Sandbox{}, false, err
	}
	if ttl := inst.rec.TTL; ttl > 0 {
		attrs["ttl"] = ttl.String()
	}
	m.publishLocked(inst, action, attrs)
	gen, rec, out := inst.gen, recordOf(inst), inst.snapshotLocked()
	inst.mu.Unlock()
	go m.run(runCtx, inst, what, start)
	err := m.createRecord(ctx, rec)
	if err == nil {
		inst.w.written = gen
	} else {
		// No record exists, and none must appear: a daemon that dies
		// during the removal below leaves strays Recover removes.
		inst.w.off = true
	}
	inst.w.mu.Unlock()
	if err != nil {
		inst.log.Error("the new sandbox's record could not be written; removing it", "error", err)
		if rerr := m.removeOp(context.WithoutCancel(ctx), inst, true, "its record could not be written"); rerr != nil {
			inst.log.Error("removing a sandbox whose record could not be written", "error", rerr)
		}
		return Sandbox{}, true, err
	}
	m.crash(recorded)
	if ttl := inst.rec.TTL; ttl > 0 {
		id := inst.id
		t := time.AfterFunc(ttl, func() { m.expire(id) })
		inst.mu.Lock()
		inst.ttl = t
		inst.mu.Unlock()
	}
	return out, true, nil
}

// startFunc starts a sandbox's VMM: a boot or a snapshot restore.
type startFunc func(ctx context.Context) (machine, error)

// slot is a sandbox being created: a place under the sandbox cap, an id, a
// fresh directory and, as they are prepared, its workspace (a jail) and
// its network. Until the registry takes the sandbox over, release undoes
// all of them.
type slot struct {
	m   *Manager
	op  string // "create" or "restore", in errors
	id  string
	dir string
	log *slog.Logger
	// budget is set once the sandbox's share of the host-wide budget is
	// reserved; wsLimits once a workspace was (being) prepared; networked
	// once the network is attached.
	budget    *vmm.Limits
	wsLimits  *vmm.Limits
	networked bool
}

// claimSlot reserves a place under the cap, picks an id and creates the
// sandbox directory; op names the operation in errors. The caller must
// call release once.
func (m *Manager) claimSlot(op string) (*slot, error) {
	if err := m.reserve(); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	s := &slot{m: m, op: op, id: m.ids.New()}
	s.log = m.log.With("sandbox", s.id)
	s.dir = filepath.Join(m.sandboxesDir, s.id)
	if err := os.MkdirAll(m.sandboxesDir, 0o700); err != nil {
		m.unreserve()
		return nil, fmt.Errorf("%s: preparing %s: %w", op, m.sandboxesDir, err)
	}
	if err := os.Mkdir(s.dir, 0o700); err != nil {
		m.unreserve()
		return nil, fmt.Errorf("%s: sandbox directory: %w", op, err)
	}
	return s, nil
}

// workspace reserves the sandbox's share of the host-wide budget (its
// VMM's limits; Create and Restore both come here first with them) and
// prepares where the sandbox's VMM finds its files (the sandbox
// directory, or a jail).
func (s *slot) workspace(limits vmm.Limits) (vmm.Workspace, error) {
	if err := s.m.reserveBudget(limits); err != nil {
		return vmm.Workspace{}, fmt.Errorf("%s: %w", s.op, err)
	}
	s.budget = &limits
	s.wsLimits = &limits
	ws, err := s.m.place.Workspace(s.id, s.dir, limits)
	if err != nil {
		return vmm.Workspace{}, fmt.Errorf("%s: preparing the VMM's workspace: %w", s.op, err)
	}
	return ws, nil
}

// processOf returns the process record of a VMM whose files live in ws.
func processOf(ws vmm.Workspace) Process {
	p := Process{
		APISocket: ws.APISocket, LogPath: ws.LogPath, MetricsPath: ws.MetricsPath,
		ConsolePath: ws.ConsolePath, VsockPath: ws.VsockPath,
	}
	if ws.Jail != nil {
		p.Jailed, p.Chroot, p.UID, p.GID, p.Cgroup = true, ws.Root, ws.UID, ws.GID, ws.Cgroup
	}
	return p
}

// record returns the new sandbox's record in StateStarting, created now,
// with its TTL deadline.
func (s *slot) record(labels map[string]string, hw Hardware, proc Process, ttl time.Duration) Sandbox {
	if labels == nil {
		labels = map[string]string{}
	}
	now := s.m.now()
	rec := Sandbox{ID: s.id, Labels: labels, State: StateStarting, Hardware: hw, Process: proc, Dir: s.dir,
		CreatedAt: now, TTL: ttl}
	if ttl > 0 {
		rec.ExpiresAt = now.Add(ttl)
	}
	return rec
}

// attachNetwork gives the sandbox its network.
func (s *slot) attachNetwork(ctx context.Context) (network.Attachment, error) {
	att, err := s.m.cfg.Network.Attach(ctx, s.id)
	if err != nil {
		return att, fmt.Errorf("%s: network: %w", s.op, err)
	}
	s.networked = true
	return att, nil
}

// release undoes claimSlot, workspace and attachNetwork unless the
// sandbox was registered (the registry then owns all of it).
func (s *slot) release(registered bool) {
	if registered {
		return
	}
	if s.networked {
		if err := s.m.cfg.Network.Detach(context.Background(), s.id); err != nil {
			s.log.Error("releasing the network of a failed "+s.op, "error", err)
		}
	}
	if s.wsLimits != nil {
		if err := s.m.place.ReleaseWorkspace(s.id, *s.wsLimits); err != nil {
			s.log.Error("removing the workspace of a failed "+s.op, "error", err)
		}
	}
	_ = os.RemoveAll(s.dir)
	if s.budget != nil {
		s.m.unreserveBudget(*s.budget)
	}
	s.m.unreserve()
}

// reserve takes a slot under the sandbox cap, so that concurrent creates
// and restores cannot pass it. The slot is given back with unreserve or
// turned into a registration by register.
func (m *Manager) reserve() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.closing:
		return errShuttingDown()
	case len(m.sandboxes)+m.reserved >= m.cfg.MaxSandboxes:
		return fmt.Errorf("the limit of %d sandboxes is reached; remove some first: %w",
			m.cfg.MaxSandboxes, errdefs.ErrResourceExhausted)
	}
	m.reserved++
	return nil
}

// unreserve gives back a slot taken by reserve.
func (m *Manager) unreserve() {
	m.mu.Lock()
	m.reserved--
	m.mu.Unlock()
}

// register adds inst, which holds a reserved slot and a reservation of
// its limits in the budget (slot.workspace), to the registry and
// accounts for its background goroutine, which the caller must start.
// From then on the registered sandbox counts in the budget in place of
// the reservation. It fails (slot and budget still reserved) once
// Shutdown has begun.
func (m *Manager) register(inst *instance) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closing {
		return errShuttingDown()
	}
	m.reserved--
	m.reservedUse.remove(inst.limits)
	m.sandboxes[inst.id] = inst
	m.wg.Add(1)
	return nil
}
