package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/disk"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/events"
	"github.com/firecracker-vmm/firecracker-vmm/internal/ids"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// Manager owns the registry of sandboxes and their lifecycle. Its methods
// are safe for concurrent use.
type Manager struct {
	cfg          Config
	rt           runtime
	events       *events.Exchange
	log          *slog.Logger
	ids          *ids.Generator
	now          func() time.Time
	sandboxesDir string
	// cloneDisk copies a disk image or snapshot file (cloneNoSync; tests
	// inject failures).
	cloneDisk func(ctx context.Context, src, dst string) error
	// networked is set when Config.Network was given: sandboxes get a NIC.
	networked bool
	// snapshots is set when Config.Snapshots was given; without a catalog
	// listing snapshots is a FailedPrecondition, like taking one.
	snapshots bool
	// place is Config.Launcher's placement of VMM files (directory or
	// jail).
	place placement
	// calls bounds the VMM calls made under an operation lock (tests
	// shorten them).
	calls callTimeouts

	// baseCtx parents every background goroutine's context; it is
	// cancelled at the end of Shutdown.
	baseCtx    context.Context
	baseCancel context.CancelFunc
	// shutdownDone is closed when Shutdown has finished.
	shutdownDone chan struct{}

	// wg tracks every background goroutine. Add is only called with mu
	// held while closing is false, or from a tracked goroutine.
	wg sync.WaitGroup

	// admit serializes the reservations of the host-wide budget
	// (reserveBudget). It is taken first, with no other lock held.
	admit sync.Mutex

	// mu guards the fields that follow. It is held only briefly.
	mu        sync.Mutex
	sandboxes map[string]*instance
	reserved  int // creates past validation, not yet registered
	// reservedUse is the budget reserved by creates and restores not yet
	// registered (reserveBudget).
	reservedUse usage
	closing     bool
}

// instance is the manager's record of one sandbox.
type instance struct {
	id string
	// op serializes operations on this sandbox (Stop, Remove, Checkpoint,
	// expiry): a one-slot semaphore, so that waiting for it honours a context.
	op chan struct{}
	// cancel ends the background goroutine (boot, then watch); done is
	// closed when it has returned.
	cancel context.CancelFunc
	done   chan struct{}
	log    *slog.Logger
	// limits are the VMM's resource limits (its vCPUs and memory), which
	// name its cgroups under the jailer. Immutable.
	limits vmm.Limits

	// w orders this sandbox's store writes; see recordWriter for the lock
	// order.
	w recordWriter

	// mu guards the fields that follow. It is held only to read or decide
	// the record and to publish its event, never across a store write, a
	// VMM call, a wait or a file system change.
	mu  sync.Mutex
	rec Sandbox
	// gen counts the changes the store must hear of (markLocked); flush
	// writes up to it.
	gen     uint64
	vm      machine     // nil when no VMM runs (or before READY)
	ttl     *time.Timer // nil without TTL
	removed bool
	// removing is set (and stored) once a removal has stopped the VMM and
	// begins releasing the sandbox's resources; Recover finishes it.
	removing bool
	// pidStart is the VMM's process start time (vmm.ProcessStartTime),
	// 0 when no VMM runs or it is unknown.
	pidStart uint64
	// opCancel cancels the preemptible operation (a checkpoint) that holds
	// the operation lock, nil when none does; preemptWanted counts the
	// Stops and Removes waiting to preempt it (see lockPreempting).
	opCancel      context.CancelCauseFunc
	preemptWanted int
}

// lock takes the operation lock or fails when ctx ends first.
func (inst *instance) lock(ctx context.Context) error {
	select {
	case inst.op <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("sandbox %s: waiting for a concurrent operation: %w", inst.id, ctx.Err())
	}
}

func (inst *instance) unlock() { <-inst.op }

// errPreempted is the cause of a preemptible operation's context when a
// Stop or Remove preempted it.
var errPreempted = errors.New("interrupted by a stop or removal of the sandbox")

// preemptible returns the context of an operation that holds inst's
// operation lock and that a Stop or Remove may preempt (a checkpoint): it
// ends with ctx or when preempt is called. The caller calls end, before
// it releases the operation lock.
func (inst *instance) preemptible(ctx context.Context) (_ context.Context, end func()) {
	pctx, cancel := context.WithCancelCause(ctx)
	inst.mu.Lock()
	inst.opCancel = cancel
	if inst.preemptWanted > 0 {
		cancel(errPreempted)
	}
	inst.mu.Unlock()
	return pctx, func() {
		inst.mu.Lock()
		inst.opCancel = nil
		inst.mu.Unlock()
		cancel(nil)
	}
}

// preempted reports whether ctx, of a preemptible operation, was
// preempted.
func preempted(ctx context.Context) bool { return errors.Is(context.Cause(ctx), errPreempted) }

// lockPreempting takes the operation lock for a Stop or Remove: it waits
// up to grace for the operation in progress, then preempts it (cancels
// its context; the operation leaves the VMM to the caller, which stops
// or kills it) and waits for the lock until ctx ends. Only preemptible
// operations are cut short; the others are bounded (every VMM call and
// store write under the lock has a timeout).
func (inst *instance) lockPreempting(ctx context.Context, grace time.Duration) error {
	select {
	case inst.op <- struct{}{}:
		return nil
	default:
	}
	if grace > 0 {
		t := time.NewTimer(grace)
		select {
		case inst.op <- struct{}{}:
			t.Stop()
			return nil
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("sandbox %s: waiting for a concurrent operation: %w", inst.id, ctx.Err())
		case <-t.C:
		}
	}
	inst.mu.Lock()
	inst.preemptWanted++
	if inst.opCancel != nil {
		inst.opCancel(errPreempted)
		inst.log.Warn("preempting the operation in progress")
	}
	inst.mu.Unlock()
	err := inst.lock(ctx)
	inst.mu.Lock()
	inst.preemptWanted--
	inst.mu.Unlock()
	return err
}

// callTimeouts bound the VMM calls a checkpoint makes with the sandbox's
// operation lock held, so that a VMM that stops answering cannot hold the
// lock for longer.
type callTimeouts struct {
	// pause bounds PUT /vm Paused.
	pause time.Duration
	// snapshot bounds PUT /snapshot/create (which writes the guest's
	// memory) and the disk copy.
	snapshot time.Duration
	// resume bounds each of the two attempts to resume the VM; the resume
	// runs even when the caller's context has ended.
	resume time.Duration
}

// The production bounds of callTimeouts.
const (
	pauseTimeout    = 10 * time.Second
	snapshotTimeout = 2 * time.Minute
)

// snapshotLocked returns a deep copy of the record. inst.mu must be held.
func (inst *instance) snapshotLocked() Sandbox {
	s := inst.rec
	s.Labels = maps.Clone(s.Labels)
	s.Network.DNS = slices.Clone(s.Network.DNS)
	return s
}

// New validates cfg and returns a Manager. The sandboxes directory is
// created on the first Create.
func New(cfg Config) (*Manager, error) {
	if cfg.Launcher == nil {
		return nil, fmt.Errorf("sandbox manager config: a launcher is required: %w", errdefs.ErrInvalidArgument)
	}
	return newManager(cfg, vmmRuntime{launcher: cfg.Launcher})
}

// newManager is New with the runtime given (tests pass a fake).
func newManager(cfg Config, rt runtime) (*Manager, error) {
	networked, snapshots := cfg.Network != nil, cfg.Snapshots != nil
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{
		networked:    networked,
		snapshots:    snapshots,
		place:        cfg.Launcher,
		cfg:          cfg,
		rt:           rt,
		events:       cfg.Events,
		log:          cfg.Logger,
		ids:          ids.NewGenerator(nil),
		now:          time.Now,
		sandboxesDir: filepath.Join(cfg.DataDir, "sandboxes"),
		cloneDisk:    cloneNoSync,
		calls:        callTimeouts{pause: pauseTimeout, snapshot: snapshotTimeout, resume: resumeTimeout},
		baseCtx:      ctx,
		baseCancel:   cancel,
		shutdownDone: make(chan struct{}),
		sandboxes:    map[string]*instance{},
	}, nil
}

// cloneNoSync copies a file without syncing it: the manager's copies are a
// sandbox's own files, which die with its VM, or files of a pending
// snapshot, which the catalog syncs when it commits. (Skipping the fsync
// also keeps it out of a checkpoint's pause.)
func cloneNoSync(ctx context.Context, src, dst string) error {
	_, err := disk.CloneWith(ctx, src, dst, disk.Options{NoSync: true})
	return err
}

// SandboxesDir returns data_dir/sandboxes.
func (m *Manager) SandboxesDir() string { return m.sandboxesDir }

// AllowedDirs returns the directories request paths may resolve into.
func (m *Manager) AllowedDirs() []string { return slices.Clone(m.cfg.AllowedDirs) }

// lookup validates id and finds its sandbox.
func (m *Manager) lookup(id string) (*instance, error) {
	if !ValidID(id) {
		shown := id
		if len(shown) > 40 {
			shown = shown[:40] + "..."
		}
		return nil, fmt.Errorf("sandbox id %s: must be %d characters of 0-9 and a-z (without i, l, o, u): %w",
			strconv.QuoteToASCII(shown), ids.Length, errdefs.ErrInvalidArgument)
	}
	m.mu.Lock()
	inst := m.sandboxes[id]
	m.mu.Unlock()
	if inst == nil {
		return nil, notFound(id)
	}
	return inst, nil
}

func notFound(id string) error { return fmt.Errorf("sandbox %s: %w", id, errdefs.ErrNotFound) }

// lockLive finds id and takes its operation lock; the sandbox is still
// registered when it returns nil. The caller unlocks.
func (m *Manager) lockLive(ctx context.Context, id string) (*instance, error) {
	return m.lockLiveWith(ctx, id, (*instance).lock)
}

// lockLiveWith is lockLive, taking the operation lock with lock.
func (m *Manager) lockLiveWith(ctx context.Context, id string, lock func(*instance, context.Context) error) (*instance, error) {
	inst, err := m.lookup(id)
	if err != nil {
		return nil, err
	}
	if err := lock(inst, ctx); err != nil {
		return nil, err
	}
	inst.mu.Lock()
	removed := inst.removed
	inst.mu.Unlock()
	if removed {
		inst.unlock()
		return nil, notFound(id)
	}
	return inst, nil
}

// Get returns one sandbox.
func (m *Manager) Get(ctx context.Context, id string) (Sandbox, error) {
	inst, err := m.lookup(id)
	if err != nil {
		return Sandbox{}, err
	}
	inst.mu.Lock()
	defer inst.mu.Unlock()
	if inst.removed {
		return Sandbox{}, notFound(id)
	}
	return inst.snapshotLocked(), nil
}

// List returns the sandboxes that match f, ordered by id.
func (m *Manager) List(ctx context.Context, f ListFilter) ([]Sandbox, error) {
	for _, s := range f.States {
		if !s.Valid() {
			return nil, fmt.Errorf("state filter %s: want one of %v: %w",
				quote(string(s)), States, errdefs.ErrInvalidArgument)
		}
	}
	m.mu.Lock()
	insts := slices.Collect(maps.Values(m.sandboxes))
	m.mu.Unlock()
	out := make([]Sandbox, 0, len(insts))
	for _, inst := range insts {
		inst.mu.Lock()
		ok := !inst.removed && matches(f, &inst.rec)
		var s Sandbox
		if ok {
			s = inst.snapshotLocked()
		}
		inst.mu.Unlock()
		if ok {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b Sandbox) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// matches reports whether s passes f.
func matches(f ListFilter, s *Sandbox) bool {
	if len(f.States) > 0 && !slices.Contains(f.States, s.State) {
		return false
	}
	for k, v := range f.Labels {
		if got, ok := s.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
