package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/events"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// fakeRuntime is a runtime whose machines are plain values: no process.
type fakeRuntime struct {
	// Options, fixed before the manager is built.
	startDelay time.Duration // Start waits this long (or until ctx ends)
	startErr   error         // Start fails with this error
	ignoreCAD  bool          // Shutdown's graceful request is ignored
	exitAfter  time.Duration // a machine exits on its own this long after Start
	exitWith   vmm.ExitStatus

	mu       sync.Mutex
	specs    []vmm.VMSpec
	restores []vmm.RestoreSpec
	machines []*fakeMachine
	pid      int
	// adoptHook, when set, runs at the start of each Adopt (without mu).
	adoptHook func()
	// Checkpoint faults and the call log (guarded by mu; see setFaults).
	faults fakeFaults
	calls  []string
}

// fakeFaults are the failures fake machines inject.
type fakeFaults struct {
	adoptErr    error // Adopt fails with this error
	restoreErr  error // Restore fails with this error
	pauseErr    error // Pause fails with this error
	snapshotErr error // CreateSnapshot fails with this error
	resumeFails int   // this many Resume calls fail (then they succeed)
	// hangSnapshot and hangResume make CreateSnapshot and Resume block
	// until their context ends or the machine is killed (or, when release
	// is set, until it is closed instead), like a VMM that no longer
	// answers; each call that blocks is announced on hung, if set.
	hangSnapshot, hangResume bool
	hung                     chan<- string
	release                  <-chan struct{}
}

// hang blocks a call that the faults make hang (reporting it as call)
// until ctx ends or the machine exits; it returns false at once otherwise.
func (m *fakeMachine) hang(ctx context.Context, call string, on bool) (bool, error) {
	m.rt.mu.Lock()
	hung, release := m.rt.faults.hung, m.rt.faults.release
	m.rt.mu.Unlock()
	if !on {
		return false, nil
	}
	if hung != nil {
		hung <- call
	}
	done := m.done
	if release != nil {
		done = nil
	}
	select {
	case <-ctx.Done():
		return true, fmt.Errorf("fake %s: %w", call, ctx.Err())
	case <-done:
		return true, fmt.Errorf("fake %s: the VMM was killed", call)
	case <-release:
		return true, fmt.Errorf("fake %s: no answer", call)
	}
}

// setFaults replaces the injected faults.
func (r *fakeRuntime) setFaults(f fakeFaults) {
	r.mu.Lock()
	r.faults = f
	r.mu.Unlock()
}

// record appends a call to the log.
func (r *fakeRuntime) record(call string) {
	r.mu.Lock()
	r.calls = append(r.calls, call)
	r.mu.Unlock()
}

// callLog returns the calls recorded so far.
func (r *fakeRuntime) callLog() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// fakeVMState is what a fake snapshot's vmstate file holds.
type fakeVMState struct {
	MemoryMiB int    `json:"memory_mib"`
	Type      string `json:"type"`
}

// Restore checks the snapshot files like Firecracker would and returns a
// running fake machine.
func (r *fakeRuntime) Restore(ctx context.Context, spec vmm.RestoreSpec) (machine, error) {
	r.mu.Lock()
	r.restores = append(r.restores, spec)
	r.pid++
	pid := 1000 + r.pid
	restoreErr := r.faults.restoreErr
	r.mu.Unlock()
	r.record("restore")
	if r.startDelay > 0 {
		select {
		case <-time.After(r.startDelay):
		case <-ctx.Done():
			return nil, fmt.Errorf("fake restore: %w", ctx.Err())
		}
	}
	if restoreErr != nil {
		return nil, restoreErr
	}
	data, err := os.ReadFile(spec.SnapshotPath)
	if err != nil {
		return nil, fmt.Errorf("fake restore: %w", err)
	}
	var st fakeVMState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("fake restore: vmstate: %w", err)
	}
	if fi, err := os.Stat(spec.MemFilePath); err != nil || fi.Size() != int64(st.MemoryMiB)<<20 {
		return nil, fmt.Errorf("fake restore: memory file %s: %v", spec.MemFilePath, err)
	}
	if _, err := os.Stat(filepath.Join(spec.Dir, DiskName)); err != nil {
		return nil, fmt.Errorf("fake restore: disk: %w", err)
	}
	m := r.newMachine(spec.ID, spec.Dir, pid, st.MemoryMiB)
	r.mu.Lock()
	r.machines = append(r.machines, m)
	r.mu.Unlock()
	return m, nil
}

func (r *fakeRuntime) Start(ctx context.Context, spec vmm.VMSpec) (machine, error) {
	r.mu.Lock()
	r.specs = append(r.specs, spec)
	r.pid++
	pid := 1000 + r.pid
	r.mu.Unlock()
	if r.startDelay > 0 {
		select {
		case <-time.After(r.startDelay):
		case <-ctx.Done():
			return nil, fmt.Errorf("fake start: %w", ctx.Err())
		}
	}
	if r.startErr != nil {
		return nil, r.startErr
	}
	m := r.newMachine(spec.ID, spec.Dir, pid, spec.MemoryMiB)
	if r.exitAfter > 0 {
		st := r.exitWith
		m.timer = time.AfterFunc(r.exitAfter, func() { m.exit(st) })
	}
	r.mu.Lock()
	r.machines = append(r.machines, m)
	r.mu.Unlock()
	return m, nil
}

// newMachine returns a running fake machine (not yet listed).
func (r *fakeRuntime) newMachine(id, dir string, pid, memoryMiB int) *fakeMachine {
	return &fakeMachine{id: id, dir: dir, pid: pid, startTime: uint64(pid) * 1000, done: make(chan struct{}),
		ignoreCAD: r.ignoreCAD, rt: r, memoryMiB: memoryMiB}
}

// Adopt finds the running fake machine spec names and checks its identity
// the way vmm.Adopt does: same pid, same start time, same instance id.
func (r *fakeRuntime) Adopt(_ context.Context, spec vmm.AdoptSpec) (machine, error) {
	r.record("adopt")
	r.mu.Lock()
	hook := r.adoptHook
	r.mu.Unlock()
	if hook != nil {
		hook()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.faults.adoptErr; err != nil {
		return nil, err
	}
	for _, m := range r.machines {
		if m.pid != spec.PID {
			continue
		}
		select {
		case <-m.done:
			continue
		default:
		}
		if m.startTime != spec.PIDStartTime || m.id != spec.ID {
			return nil, fmt.Errorf("fake adopt: pid %d (id %q, start %d) is not %s started at %d: %w",
				m.pid, m.id, m.startTime, spec.ID, spec.PIDStartTime, vmm.ErrIdentityMismatch)
		}
		if m.dir != spec.Dir {
			return nil, fmt.Errorf("fake adopt: %s runs in %s, not %s", m.id, m.dir, spec.Dir)
		}
		return m, nil
	}
	return nil, fmt.Errorf("fake adopt: no process %d: %w", spec.PID, errdefs.ErrNotFound)
}

// reusePid makes the running machine of sandbox id look like another
// process that got the same pid: its start time and id change.
func (r *fakeRuntime) reusePid(id string) *fakeMachine {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.machines {
		if m.id == id {
			m.startTime++
			m.id = "someone-else"
			return m
		}
	}
	return nil
}

// live counts machines that have not exited.
func (r *fakeRuntime) live() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.machines {
		select {
		case <-m.done:
		default:
			n++
		}
	}
	return n
}

type fakeMachine struct {
	id        string
	dir       string
	pid       int
	startTime uint64 // a fake process start time: pid * 1000
	done      chan struct{}
	ignoreCAD bool
	timer     *time.Timer
	rt        *fakeRuntime
	memoryMiB int

	once   sync.Once
	mu     sync.Mutex
	st     vmm.ExitStatus
	paused bool
}

// isPaused reports whether the machine is paused.
func (m *fakeMachine) isPaused() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.paused
}

func (m *fakeMachine) Pause(ctx context.Context) error {
	m.rt.record("pause")
	m.rt.mu.Lock()
	err := m.rt.faults.pauseErr
	m.rt.mu.Unlock()
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.paused = true
	m.mu.Unlock()
	return nil
}

func (m *fakeMachine) Resume(ctx context.Context) error {
	m.rt.record("resume")
	m.rt.mu.Lock()
	fail := m.rt.faults.resumeFails > 0
	if fail {
		m.rt.faults.resumeFails--
	}
	hang := m.rt.faults.hangResume
	m.rt.mu.Unlock()
	if hung, err := m.hang(ctx, "resume", hang); hung {
		return err
	}
	if fail {
		return errors.New("fake resume failure")
	}
	m.mu.Lock()
	m.paused = false
	m.mu.Unlock()
	return nil
}

// CreateSnapshot writes a small vmstate and a sparse memory file of the
// machine's size (data at offset 0 for Full, at 4096 for Diff).
func (m *fakeMachine) CreateSnapshot(ctx context.Context, p vmm.SnapshotSpec) error {
	typ := "Full"
	if p.Diff {
		typ = "Diff"
	}
	m.rt.record("snapshot " + typ)
	m.rt.mu.Lock()
	err, hang := m.rt.faults.snapshotErr, m.rt.faults.hangSnapshot
	m.rt.mu.Unlock()
	if hung, err := m.hang(ctx, "snapshot", hang); hung {
		return err
	}
	if err != nil {
		return err
	}
	if !m.isPaused() {
		return errors.New("fake: snapshot of a running VM")
	}
	st, _ := json.Marshal(fakeVMState{MemoryMiB: m.memoryMiB, Type: typ})
	if err := os.WriteFile(p.StatePath, st, 0o600); err != nil {
		return err
	}
	f, err := os.OpenFile(p.MemPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(int64(m.memoryMiB) << 20); err != nil {
		return err
	}
	off := int64(0)
	if p.Diff {
		off = 4096
	}
	_, err = f.WriteAt([]byte("fake-memory-"+typ), off)
	return err
}

func (m *fakeMachine) exit(st vmm.ExitStatus) {
	m.once.Do(func() {
		m.mu.Lock()
		m.st = st
		m.mu.Unlock()
		close(m.done)
	})
}

func (m *fakeMachine) status() vmm.ExitStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st
}

func (m *fakeMachine) Pid() int          { return m.pid }
func (m *fakeMachine) StartTime() uint64 { return m.startTime }

// Workspace lays the machine out as an unjailed VMM in its directory.
func (m *fakeMachine) Workspace() vmm.Workspace {
	ws, err := (&vmm.DirectLauncher{}).Workspace(m.id, m.dir, vmm.Limits{})
	if err != nil {
		panic(err)
	}
	return ws
}

// Describe answers like GET /: the machine's id and state.
func (m *fakeMachine) Describe(context.Context) (vmm.InstanceInfo, error) {
	select {
	case <-m.done:
		return vmm.InstanceInfo{}, errors.New("fake describe: the VMM has exited")
	default:
	}
	st := vmm.StateRunning
	if m.isPaused() {
		st = vmm.StatePaused
	}
	return vmm.InstanceInfo{ID: m.id, State: st}, nil
}

func (m *fakeMachine) Close() error          { return nil }
func (m *fakeMachine) Done() <-chan struct{} { return m.done }

func (m *fakeMachine) Wait(ctx context.Context) (vmm.ExitStatus, error) {
	select {
	case <-m.done:
		return m.status(), nil
	case <-ctx.Done():
		return vmm.ExitStatus{}, ctx.Err()
	}
}

func (m *fakeMachine) Shutdown(ctx context.Context) (vmm.ExitStatus, error) {
	if !m.ignoreCAD {
		m.exit(vmm.ExitStatus{Known: true})
	}
	select {
	case <-m.done:
		return m.status(), nil
	case <-ctx.Done():
	}
	return m.Kill(ctx)
}

func (m *fakeMachine) Kill(context.Context) (vmm.ExitStatus, error) {
	if m.timer != nil {
		m.timer.Stop()
	}
	m.exit(vmm.ExitStatus{Known: true, Signal: syscall.SIGKILL})
	return m.status(), nil
}

// recorder collects every event of an exchange.
type recorder struct {
	mu     sync.Mutex
	evs    []events.Event
	notify chan struct{}
}

func newRecorder(t *testing.T, x *events.Exchange) *recorder {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sub, err := x.Subscribe(ctx, events.Filter{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{notify: make(chan struct{}, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range sub.C() {
			r.mu.Lock()
			r.evs = append(r.evs, ev)
			r.mu.Unlock()
			select {
			case r.notify <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if err := sub.Err(); errors.Is(err, events.ErrSlowConsumer) {
			t.Errorf("event recorder fell behind")
		}
	})
	return r
}

// of returns the events of sandbox id.
func (r *recorder) of(id string) []events.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []events.Event
	for _, ev := range r.evs {
		if ev.SandboxID == id {
			out = append(out, ev)
		}
	}
	return out
}

// actions returns "action/state" strings of sandbox id's events.
func (r *recorder) actions(id string) []string {
	var out []string
	for _, ev := range r.of(id) {
		out = append(out, ev.Action+"/"+ev.State)
	}
	return out
}

// wait waits until sandbox id has an event with action and returns it.
func (r *recorder) wait(t *testing.T, id, action string, timeout time.Duration) events.Event {
	t.Helper()
	deadline := time.After(timeout)
	for {
		for _, ev := range r.of(id) {
			if ev.Action == action {
				return ev
			}
		}
		select {
		case <-r.notify:
		case <-deadline:
			t.Fatalf("sandbox %s: no %q event after %v; got %v", id, action, timeout, r.actions(id))
		}
	}
}

// testEnv is a manager over a temporary data dir with a kernel and a
// rootfs in the default allowed directories.
type testEnv struct {
	dataDir string
	kernel  string
	rootfs  string
	x       *events.Exchange
	rec     *recorder
	m       *Manager
}

// newTestEnv builds a manager on rt (nil: the real vmm runtime with
// cfg.Launcher). mutate adjusts the config.
func newTestEnv(t *testing.T, dataDir string, rt runtime, mutate func(*Config)) *testEnv {
	t.Helper()
	e := &testEnv{dataDir: dataDir, x: events.NewExchange(events.Options{Buffer: 4096})}
	for _, d := range []string{"kernels", "images"} {
		if err := os.MkdirAll(filepath.Join(dataDir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.kernel = filepath.Join(dataDir, "kernels", "vmlinux")
	e.rootfs = filepath.Join(dataDir, "images", "rootfs.ext4")
	writeFile(t, e.kernel, 4096)
	writeSparse(t, e.rootfs, 8<<20)
	e.rec = newRecorder(t, e.x)
	cfg := Config{
		DataDir:       dataDir,
		DefaultKernel: e.kernel,
		DefaultRootfs: e.rootfs,
		Events:        e.x,
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		StopTimeout:   2 * time.Second,
	}
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if mutate != nil {
		mutate(&cfg)
	}
	if rt != nil && cfg.Launcher == nil {
		cfg.Launcher = nopLauncher{&vmm.DirectLauncher{}}
	}
	var err error
	if rt == nil {
		e.m, err = New(cfg)
	} else {
		e.m, err = newManager(cfg, rt)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := e.m.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		e.x.Close()
	})
	return e
}

func writeFile(t *testing.T, path string, size int) {
	t.Helper()
	if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeSparse creates a sparse file of size bytes with a little data.
func writeSparse(t *testing.T, path string, size int64) {
	t.Helper()
	testutil.WriteSparse(t, path, size, testutil.Region{Off: 1 << 20, Data: []byte("rootfs-data")})
}

// waitState polls until sandbox id is in state want.
func (e *testEnv) waitState(t *testing.T, id string, want State, timeout time.Duration) Sandbox {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s, err := e.m.Get(t.Context(), id)
		if err != nil {
			t.Fatalf("get %s: %v", id, err)
		}
		if s.State == want {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s: state %s after %v, want %s (reason %q)", id, s.State, timeout, want, s.FailureReason)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sandboxDirs lists data_dir/sandboxes (nil when it does not exist).
func (e *testEnv) sandboxDirs(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(e.dataDir, "sandboxes"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, en := range entries {
		names = append(names, en.Name())
	}
	return names
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// nopLauncher is a Launcher that never launches (the fake runtime stands in
// for it); it places files as an unjailed launcher does.
type nopLauncher struct{ *vmm.DirectLauncher }

func (nopLauncher) Launch(context.Context, vmm.LaunchRequest) (*vmm.Launched, error) {
	return nil, errors.New("nopLauncher: not for launching")
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func ctxWithTimeout(t *testing.T, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), d)
}

// expect waits until sandbox id has exactly the events want
// ("action/state"), which arrive asynchronously, and fails otherwise.
func (r *recorder) expect(t *testing.T, id string, want ...string) {
	t.Helper()
	deadline := time.After(2 * time.Second)
	for {
		got := r.actions(id)
		if slices.Equal(got, want) {
			return
		}
		select {
		case <-r.notify:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Errorf("sandbox %s: events %v, want %v", id, got, want)
			return
		}
	}
}
