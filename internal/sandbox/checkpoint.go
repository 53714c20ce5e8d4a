package sandbox

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/ids"
	"github.com/firecracker-vmm/firecracker-vmm/internal/network"
	"github.com/firecracker-vmm/firecracker-vmm/internal/snapshot"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// CheckpointRequest asks for a snapshot of a running sandbox.
type CheckpointRequest struct {
	SandboxID string
	// Name is unique per sandbox ([A-Za-z0-9._-], 1..64).
	Name string
	// Diff asks for a differential memory snapshot (needs dirty-page
	// tracking and an earlier snapshot of the sandbox as base).
	Diff bool
}

// RestoreRequest asks for a new sandbox from a snapshot.
type RestoreRequest struct {
	SnapshotID string
	Labels     map[string]string
	TTL        time.Duration
}

// SnapshotCatalog is what the manager needs of the snapshot catalog. It is
// implemented by *snapshot.Catalog.
type SnapshotCatalog interface {
	// Begin validates and reserves name for sandboxID and creates the
	// temporary directory the snapshot is written into.
	Begin(sandboxID, name string) (*snapshot.Pending, error)
	// Commit checksums the pending files, writes meta.json and renames the
	// snapshot into place; on failure nothing remains.
	Commit(p *snapshot.Pending, m snapshot.Meta) (snapshot.Meta, error)
	// Abort removes a pending snapshot and releases its name.
	Abort(p *snapshot.Pending)
	// Acquire pins a snapshot for reading; release exactly once.
	Acquire(id string) (m snapshot.Meta, release func(), err error)
	// List returns the snapshots, all or of one sandbox.
	List(sandboxID string) []snapshot.Meta
	// Delete removes a snapshot, waiting for pins until ctx ends.
	Delete(ctx context.Context, id string) error
}

var _ SnapshotCatalog = (*snapshot.Catalog)(nil)

// Checkpoint timing.
const (
	// resumeTimeout bounds each attempt to resume a paused sandbox
	// (callTimeouts.resume); the resume runs even when the caller's
	// context has ended.
	resumeTimeout = 10 * time.Second
	// resumeRetryDelay separates the two resume attempts.
	resumeRetryDelay = 50 * time.Millisecond
)

// diffLayerName is the file in a pending snapshot's directory that receives
// a Diff snapshot's sparse memory layer before it is merged onto its base.
const diffLayerName = "mem.diff"

// errNoSnapshots is returned when no catalog is configured.
func errNoSnapshots() error {
	return fmt.Errorf("snapshots are not configured: %w", errdefs.ErrFailedPrecondition)
}

// Checkpoint pauses the sandbox, snapshots its memory, state and disk,
// resumes it and records the snapshot in the catalog.
//
// It runs with the sandbox's operation lock held, so that a concurrent Stop
// or Remove waits for it (or, when it came first, makes it fail with
// FailedPrecondition); a Remove with force, or a Stop once its timeout has
// passed, interrupts it (Aborted) and kills the VMM. Every VMM call is
// bounded (callTimeouts). The sandbox is resumed whatever fails after the
// pause (a failed resume is retried once); a VM that cannot be resumed
// (the VMM refuses or no longer answers) is never left paused and shown
// as ready: the sandbox becomes FAILED, with the reason, and its VMM is
// killed. Otherwise its state never changes. A failed checkpoint leaves
// nothing in the catalog; the error names the step that failed.
func (m *Manager) Checkpoint(ctx context.Context, req CheckpointRequest) (snapshot.Meta, error) {
	cat := m.cfg.Snapshots
	if err := snapshot.ValidName(req.Name); err != nil {
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			err = fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
		}
		return snapshot.Meta{}, fmt.Errorf("checkpoint: %w", err)
	}
	inst, err := m.lockLive(ctx, req.SandboxID)
	if err != nil {
		return snapshot.Meta{}, fmt.Errorf("checkpoint: %w", err)
	}
	defer inst.unlock()
	// A Stop or Remove may preempt the checkpoint (it then owns the VMM).
	ctx, endOp := inst.preemptible(ctx)
	defer endOp()
	inst.mu.Lock()
	rec := inst.snapshotLocked()
	mach := inst.vm
	inst.mu.Unlock()
	if (rec.State != StateReady && rec.State != StateRunning) || mach == nil {
		return snapshot.Meta{}, fmt.Errorf("checkpoint: sandbox %s is %s; only a ready or running sandbox can be checkpointed: %w",
			rec.ID, rec.State, errdefs.ErrFailedPrecondition)
	}

	typ := snapshot.TypeFull
	var base snapshot.Meta
	if req.Diff {
		typ = snapshot.TypeDiff
		if !rec.Hardware.TrackDirtyPages {
			return snapshot.Meta{}, fmt.Errorf("checkpoint: sandbox %s: a Diff checkpoint needs a sandbox created with dirty page tracking: %w",
				rec.ID, errdefs.ErrFailedPrecondition)
		}
		if rec.LastSnapshotID == "" {
			return snapshot.Meta{}, fmt.Errorf("checkpoint: sandbox %s: a Diff checkpoint needs an earlier checkpoint of this sandbox: %w",
				rec.ID, errdefs.ErrFailedPrecondition)
		}
		b, release, err := cat.Acquire(rec.LastSnapshotID)
		if err != nil {
			if errors.Is(err, errdefs.ErrNotFound) {
				return snapshot.Meta{}, fmt.Errorf("checkpoint: sandbox %s: the base of a Diff checkpoint, snapshot %s, was deleted; take a Full checkpoint: %w",
					rec.ID, rec.LastSnapshotID, errdefs.ErrFailedPrecondition)
			}
			return snapshot.Meta{}, fmt.Errorf("checkpoint: base snapshot %s: %w", rec.LastSnapshotID, err)
		}
		defer release()
		base = b
	}

	p, err := cat.Begin(rec.ID, req.Name)
	if err != nil {
		return snapshot.Meta{}, fmt.Errorf("checkpoint: %w", err)
	}
	finished := false // Commit was called: it cleans up after itself
	defer func() {
		if !finished {
			cat.Abort(p)
		}
	}()
	memOut := p.MemPath
	if req.Diff {
		memOut = filepath.Join(p.Dir, diffLayerName)
	}
	// The VMM writes where its workspace says (in a jail: its chroot,
	// after unlinking what a restore left there, so that nothing is
	// written through a link to another snapshot's files); the files are
	// then collected into the pending snapshot.
	ws := mach.Workspace()
	stateWrite, err := ws.Output(SnapshotStateName, p.VMStatePath)
	if err != nil {
		return snapshot.Meta{}, checkpointError("preparing the VMM's workspace", err)
	}
	memWrite, err := ws.Output(SnapshotMemName, memOut)
	if err != nil {
		return snapshot.Meta{}, checkpointError("preparing the VMM's workspace", err)
	}
	defer func() {
		_ = ws.Discard(stateWrite)
		_ = ws.Discard(memWrite)
	}()

	// From the pause to the resume: as little as possible.
	createdAt := m.now()
	var pausedAt time.Time
	snapshotTried := false
	failedStep, stepErr := func() (string, error) {
		pctx, cancel := context.WithTimeout(ctx, m.calls.pause)
		defer cancel()
		if err := mach.Pause(pctx); err != nil {
			return "pause", err
		}
		pausedAt = time.Now()
		m.crash(CrashCheckpointPaused)
		snapshotTried = true
		sctx, cancel := context.WithTimeout(ctx, m.calls.snapshot)
		defer cancel()
		err := mach.CreateSnapshot(sctx, vmm.SnapshotSpec{StatePath: stateWrite, MemPath: memWrite, Diff: req.Diff})
		if err != nil {
			return "snapshot create", err
		}
		// The disk is copied while the guest cannot write to it: a memory
		// image restored over a different disk corrupts the guest.
		if err := m.cloneDisk(sctx, rec.Hardware.Disk, p.DiskPath); err != nil {
			return "disk copy", err
		}
		m.crash(CrashCheckpointWritten)
		return "", nil
	}()
	if preempted(ctx) {
		// The Stop or Remove that preempted the checkpoint kills the VMM:
		// no resume (a VMM that hangs would delay it).
		if stepErr == nil {
			stepErr = context.Cause(ctx)
		}
		inst.log.Warn("checkpoint interrupted by a stop or removal", "name", req.Name, "step", failedStep)
		return snapshot.Meta{}, fmt.Errorf("checkpoint: %s: %w: %w", failedStepOr(failedStep), stepErr, errdefs.ErrAborted)
	}
	resumeErr := m.resume(ctx, inst, mach)
	if resumeErr == nil && stepErr == nil {
		m.crash(CrashCheckpointResumed)
	}
	if resumeErr != nil && preempted(ctx) {
		return snapshot.Meta{}, fmt.Errorf("checkpoint: resume: %w: %w", context.Cause(ctx), errdefs.ErrAborted)
	}
	var pause time.Duration
	if !pausedAt.IsZero() {
		pause = time.Since(pausedAt)
	}

	// fail reports a failed checkpoint. Once a snapshot was attempted,
	// Firecracker may have reset the dirty-page log, so the last snapshot
	// can no longer be the base of a Diff.
	fail := func(err error) (snapshot.Meta, error) {
		if snapshotTried {
			inst.mu.Lock()
			inst.rec.LastSnapshotID = ""
			inst.markLocked()
			inst.mu.Unlock()
			m.flushLogged(ctx, inst)
		}
		inst.log.Error("checkpoint failed", "name", req.Name, "error", err)
		return snapshot.Meta{}, err
	}
	switch {
	case stepErr != nil && resumeErr != nil:
		m.failUnresumed(ctx, inst, resumeErr)
		return fail(fmt.Errorf("%w (and resuming the sandbox failed too: the sandbox failed and its VMM was killed: %v)",
			checkpointError(failedStep, stepErr), resumeErr))
	case stepErr != nil:
		return fail(checkpointError(failedStep, stepErr))
	case resumeErr != nil:
		m.failUnresumed(ctx, inst, resumeErr)
		return fail(fmt.Errorf("checkpoint: resume (the sandbox failed and its VMM was killed): %w", resumeErr))
	}

	if err := ws.Collect(ctx, stateWrite, p.VMStatePath, m.cloneDisk); err != nil {
		return fail(checkpointError("snapshot move", err))
	}
	if err := ws.Collect(ctx, memWrite, memOut, m.cloneDisk); err != nil {
		return fail(checkpointError("snapshot move", err))
	}
	if req.Diff {
		// Make the stored memory file complete: the base's memory with the
		// dirty pages of this layer written over it.
		if err := mergeDiff(ctx, filepath.Join(base.Dir, snapshot.MemName), memOut, p.MemPath); err != nil {
			return fail(checkpointError("diff merge", err))
		}
		if err := os.Remove(memOut); err != nil {
			return fail(checkpointError("diff merge", err))
		}
	}

	meta := snapshot.Meta{
		ID:                 p.ID,
		Name:               req.Name,
		SandboxID:          rec.ID,
		CreatedAt:          createdAt,
		Type:               typ,
		ParentID:           base.ID,
		FirecrackerVersion: m.cfg.FirecrackerVersion,
		SnapshotVersion:    m.cfg.SnapshotVersion,
		Hardware: snapshot.Hardware{
			VCPUs: rec.Hardware.VCPUs, MemoryMiB: rec.Hardware.MemoryMiB,
			Kernel: rec.Hardware.Kernel, Initrd: rec.Hardware.Initrd, Rootfs: rec.Hardware.Rootfs,
			BootArgs: rec.Hardware.BootArgs, TrackDirtyPages: rec.Hardware.TrackDirtyPages,
		},
		PauseDuration: pause,
	}
	if rec.Network.TAP != "" {
		meta.Network = &snapshot.Network{
			NICID: network.NICID, TAP: rec.Network.TAP, GuestIP: rec.Network.GuestIP, GuestMAC: rec.Network.MAC,
		}
	}
	if rec.Process.VsockPath != "" {
		meta.Vsock = &snapshot.Vsock{CID: GuestCID, UDSPath: VsockName}
	}
	finished = true
	meta, err = cat.Commit(p, meta)
	if err != nil {
		return fail(checkpointError("commit", err))
	}
	m.crash(CrashCheckpointCommitted)

	inst.mu.Lock()
	inst.rec.LastPause = pause
	inst.rec.LastSnapshotID = meta.ID
	m.publishLocked(inst, ActionCheckpointed, map[string]string{
		"snapshot_id": meta.ID, "name": meta.Name, "type": typ,
		"pause_ms": strconv.FormatFloat(float64(pause.Microseconds())/1000, 'f', 3, 64),
	})
	inst.mu.Unlock()
	m.flushLogged(ctx, inst)
	inst.log.Info("sandbox checkpointed", "snapshot", meta.ID, "name", meta.Name, "type", typ, "pause", pause)
	return meta, nil
}

// checkpointError names the failed step; a full disk is ResourceExhausted.
func checkpointError(step string, err error) error {
	return fmt.Errorf("checkpoint: %s: %w", step, noSpace(err))
}

// noSpace returns err, classed ResourceExhausted (and said to be a full
// disk) when it is ENOSPC or EDQUOT (isNoSpace).
func noSpace(err error) error {
	if err == nil || !isNoSpace(err) {
		return err
	}
	if errors.Is(err, errdefs.ErrResourceExhausted) {
		return err
	}
	return fmt.Errorf("no space left on device: %w: %w", err, errdefs.ErrResourceExhausted)
}

// isNoSpace reports whether err is ENOSPC, locally or as reported by
// Firecracker ("No space left on device (os error 28)").
func isNoSpace(err error) bool {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, errdefs.ErrResourceExhausted) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "No space left on device") || strings.Contains(msg, "os error 28")
}

// parseFormatVersion parses a snapshot data format version
// ("10.0.0" or "v10.0.0") into its major and minor numbers.
func parseFormatVersion(v string) (major, minor int, err error) {
	parts := strings.Split(strings.TrimPrefix(v, "v"), ".")
	if len(parts) != 3 {
		return 0, 0, fmt.Errorf("want MAJOR.MINOR.PATCH")
	}
	var n [3]int
	for i, p := range parts {
		if n[i], err = strconv.Atoi(p); err != nil || n[i] < 0 || p == "" || p[0] == '+' {
			return 0, 0, fmt.Errorf("want MAJOR.MINOR.PATCH")
		}
	}
	return n[0], n[1], nil
}

// checkSnapshotVersion applies Firecracker's rule: a snapshot loads when its
// data format has the binary's major version and a minor not above it.
func checkSnapshotVersion(snap, binary string) error {
	sm, sn, err := parseFormatVersion(snap)
	if err != nil {
		return fmt.Errorf("its snapshot format version %q is unreadable (%v): %w", snap, err, errdefs.ErrFailedPrecondition)
	}
	bm, bn, err := parseFormatVersion(binary)
	if err != nil {
		return fmt.Errorf("the installed Firecracker's snapshot format version %q is unreadable (%v): %w", binary, err, errdefs.ErrFailedPrecondition)
	}
	if sm != bm || sn > bn {
		return fmt.Errorf("it was written in snapshot format %s, which the installed Firecracker (format %s) cannot load: %w",
			snap, binary, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// invalidSnapshotID describes a malformed snapshot id.
func invalidSnapshotID(id string) error {
	shown := id
	if len(shown) > 40 {
		shown = shown[:40] + "..."
	}
	return fmt.Errorf("snapshot id %s: must be %d characters of 0-9 and a-z (without i, l, o, u): %w",
		strconv.QuoteToASCII(shown), ids.Length, errdefs.ErrInvalidArgument)
}

// Restore creates a new sandbox from a snapshot; it returns at once in
// StateStarting and reaches StateReady in the background.
//
// The snapshot stays pinned until the new sandbox has its own disk copy and
// its own links to (or copies of) the memory and state files, so that the
// running VM never depends on the catalog. Nothing is started for a
// snapshot the installed Firecracker cannot load (FailedPrecondition), and
// a restore that fails before the sandbox is registered leaves nothing.
func (m *Manager) Restore(ctx context.Context, req RestoreRequest) (_ Sandbox, err error) {
	if err := ctx.Err(); err != nil {
		return Sandbox{}, fmt.Errorf("restore: %w", err)
	}
	if m.isClosing() {
		return Sandbox{}, errShuttingDown()
	}
	cat := m.cfg.Snapshots
	if !ids.Valid(req.SnapshotID) {
		return Sandbox{}, fmt.Errorf("restore: %w", invalidSnapshotID(req.SnapshotID))
	}
	meta, release, err := cat.Acquire(req.SnapshotID)
	if err != nil {
		return Sandbox{}, fmt.Errorf("restore: %w", err)
	}
	var unpinOnce sync.Once
	unpin := func() { unpinOnce.Do(release) }
	defer unpin()

	if err := checkSnapshotVersion(meta.SnapshotVersion, m.cfg.SnapshotVersion); err != nil {
		return Sandbox{}, fmt.Errorf("restore: snapshot %s: %w", meta.ID, err)
	}
	labels := maps.Clone(req.Labels)
	if err := checkLabels(labels); err != nil {
		return Sandbox{}, fmt.Errorf("restore: %w", err)
	}
	if req.TTL < 0 || req.TTL > MaxTTL {
		return Sandbox{}, fmt.Errorf("restore: %w", invalid("ttl %v: must be between 0 (none) and %v", req.TTL, MaxTTL))
	}
	if meta.Network != nil && !m.networked {
		return Sandbox{}, fmt.Errorf("restore: snapshot %s has a network interface but networking is not configured: %w",
			meta.ID, errdefs.ErrFailedPrecondition)
	}
	for _, name := range []string{snapshot.VMStateName, snapshot.MemName, snapshot.DiskName} {
		fi, ok := meta.Files[name]
		if !ok {
			return Sandbox{}, fmt.Errorf("restore: snapshot %s has no %s: %w", meta.ID, name, errdefs.ErrFailedPrecondition)
		}
		// Sizes always, the (small) vmstate's checksum too; re-hashing
		// the memory and the disk would add seconds per GiB.
		if err := verifyFile(filepath.Join(meta.Dir, name), fi, name == snapshot.VMStateName); err != nil {
			return Sandbox{}, fmt.Errorf("restore: snapshot %s is damaged: %v: %w", meta.ID, err, errdefs.ErrFailedPrecondition)
		}
	}

	slot, err := m.claimSlot("restore")
	if err != nil {
		return Sandbox{}, err
	}
	registered := false
	defer func() { slot.release(registered) }()
	id, dir, log := slot.id, slot.dir, slot.log
	hw := meta.Hardware
	limits := vmm.Limits{VCPUs: hw.VCPUs, MemoryMiB: hw.MemoryMiB}
	ws, err := slot.workspace(limits)
	if err != nil {
		return Sandbox{}, err
	}
	proc := processOf(ws)
	proc.VsockPath = "" // unless the snapshot has a vsock device
	diskPath := ws.Path(DiskName)
	statePath := ws.Path(SnapshotStateName)
	memPath := ws.Path(SnapshotMemName)
	if err := m.cloneDisk(ctx, filepath.Join(meta.Dir, snapshot.DiskName), diskPath); err != nil {
		return Sandbox{}, fmt.Errorf("restore: copying the snapshot's disk: %w", restoreCopyError(ctx, err))
	}
	if err := ws.Own(diskPath); err != nil {
		return Sandbox{}, fmt.Errorf("restore: %w", err)
	}
	// Unjailed VMMs share the catalog's (read-only) memory and state files
	// by hard link; a jail gets its own copies (reflinks where possible),
	// owned by the jail's user, which must never own the catalog's files.
	for _, f := range []struct{ src, name string }{
		{filepath.Join(meta.Dir, snapshot.VMStateName), SnapshotStateName},
		{filepath.Join(meta.Dir, snapshot.MemName), SnapshotMemName},
	} {
		if err := ws.Place(ctx, f.src, f.name, true, m.cloneDisk); err != nil {
			return Sandbox{}, fmt.Errorf("restore: %w", restoreCopyError(ctx, err))
		}
	}
	unpin() // the sandbox no longer reads the catalog's files
	m.crash(CrashRestoreFiles)

	var att network.Attachment
	if meta.Network != nil {
		if att, err = slot.attachNetwork(ctx); err != nil {
			return Sandbox{}, err
		}
		m.crash(CrashRestoreNetwork)
	}

	rec := slot.record(labels, Hardware{
		VCPUs: hw.VCPUs, MemoryMiB: hw.MemoryMiB,
		Kernel: hw.Kernel, Initrd: hw.Initrd, Rootfs: hw.Rootfs, Disk: diskPath,
		BootArgs: hw.BootArgs, TrackDirtyPages: hw.TrackDirtyPages,
	}, proc, req.TTL)
	rec.RestoredFrom, rec.LastSnapshotID = meta.ID, meta.ID
	spec := vmm.RestoreSpec{
		ID: id, Dir: dir, APISocket: rec.Process.APISocket, ConsolePath: rec.Process.ConsolePath,
		Logging:      vmm.LoggingSpec{LogPath: rec.Process.LogPath, MetricsPath: rec.Process.MetricsPath},
		SnapshotPath: statePath, MemFilePath: memPath,
		ResumeVM: true, TrackDirtyPages: hw.TrackDirtyPages, Limits: &limits,
	}
	if meta.Vsock != nil {
		// The snapshot's relative socket path would resolve in this
		// directory anyway; the override makes it explicit.
		rec.Process.VsockPath = ws.VsockPath
		spec.VsockPath = VsockName
	}
	if meta.Network != nil {
		// The guest keeps the identity it had in the snapshot; the host
		// side (namespace, TAP, address) is the new sandbox's own. The TAP
		// has the same name in every namespace: no network_overrides.
		rec.Network = networkOf(att)
		rec.Network.MAC = meta.Network.GuestMAC
		rec.Network.GuestIP = meta.Network.GuestIP
		spec.NetNS = att.NetnsPath
	}
	inst := newInstance(rec, log, limits)
	attrs := map[string]string{
		"snapshot_id": meta.ID, "vcpus": strconv.Itoa(hw.VCPUs), "memory_mib": strconv.Itoa(hw.MemoryMiB),
	}
	out, registered, err := m.startNew(ctx, inst, ActionRestored, "restore", attrs, CrashRestoreRecorded,
		func(ctx context.Context) (machine, error) { return m.rt.Restore(ctx, spec) })
	if err != nil {
		return Sandbox{}, fmt.Errorf("restore: %w", err)
	}
	log.Info("sandbox restored from snapshot", "snapshot", meta.ID, "source_sandbox", meta.SandboxID, "ttl", req.TTL)
	return out, nil
}

// restoreCopyError prefers the context's error when it ended the copy.
func restoreCopyError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// ListSnapshots lists snapshots, all or of one sandbox (which need not
// exist any more).
func (m *Manager) ListSnapshots(ctx context.Context, sandboxID string) ([]snapshot.Meta, error) {
	if !m.snapshots {
		return nil, fmt.Errorf("list snapshots: %w", errNoSnapshots())
	}
	cat := m.cfg.Snapshots
	if sandboxID != "" && !ValidID(sandboxID) {
		if _, err := m.lookup(sandboxID); err != nil {
			return nil, fmt.Errorf("list snapshots: %w", err)
		}
	}
	out := cat.List(sandboxID)
	if out == nil {
		out = []snapshot.Meta{}
	}
	return out, nil
}

// DeleteSnapshot removes a snapshot; it waits (bounded by ctx) for restores
// that are reading it.
func (m *Manager) DeleteSnapshot(ctx context.Context, id string) error {
	cat := m.cfg.Snapshots
	if !ids.Valid(id) {
		return fmt.Errorf("delete snapshot: %w", invalidSnapshotID(id))
	}
	if err := cat.Delete(ctx, id); err != nil {
		return fmt.Errorf("delete snapshot: %w", err)
	}
	return nil
}
