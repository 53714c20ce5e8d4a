package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/disk"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/network"
	"github.com/firecracker-vmm/firecracker-vmm/internal/snapshot"
)

// Versions the test managers pretend the installed Firecracker has.
const (
	testFirecrackerVersion = "1.16.1"
	testSnapshotVersion    = "10.0.0"
)

// snapEnv is a test env with a real snapshot catalog under
// data_dir/snapshots.
type snapEnv struct {
	*testEnv
	cat *snapshot.Catalog
}

// withCatalog returns a Config mutation that opens a catalog in dataDir and
// configures the versions; the opened catalog is stored in *cat.
func withCatalog(t *testing.T, dataDir string, cat **snapshot.Catalog, more func(*Config)) func(*Config) {
	t.Helper()
	c, err := snapshot.Open(filepath.Join(dataDir, "snapshots"), nil)
	if err != nil {
		t.Fatal(err)
	}
	*cat = c
	return func(cfg *Config) {
		cfg.Snapshots = c
		cfg.FirecrackerVersion = testFirecrackerVersion
		cfg.SnapshotVersion = "v" + testSnapshotVersion
		if more != nil {
			more(cfg)
		}
	}
}

// newSnapEnv builds a manager on the fake runtime with a catalog; every
// disk copy is recorded in rt's call log.
func newSnapEnv(t *testing.T, rt *fakeRuntime, mutate func(*Config)) *snapEnv {
	t.Helper()
	dataDir := t.TempDir()
	var cat *snapshot.Catalog
	e := newTestEnv(t, dataDir, rt, withCatalog(t, dataDir, &cat, func(c *Config) {
		c.DefaultMemoryMiB = 128 // small memory files: checksums stay fast under -race
		if mutate != nil {
			mutate(c)
		}
	}))
	e.m.cloneDisk = func(ctx context.Context, src, dst string) error {
		rt.record("disk copy")
		return disk.Clone(ctx, src, dst)
	}
	return &snapEnv{testEnv: e, cat: cat}
}

// ready creates a sandbox and waits until it is ready.
func (e *snapEnv) ready(t *testing.T, req CreateRequest) Sandbox {
	t.Helper()
	s, err := e.m.Create(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	return e.waitState(t, s.ID, StateReady, 5*time.Second)
}

// assertNoPartialSnapshot checks that the catalog holds want snapshots and
// that no temporary directory is left on disk.
func (e *snapEnv) assertNoPartialSnapshot(t *testing.T, want int) {
	t.Helper()
	if got := e.cat.List(""); len(got) != want {
		t.Errorf("catalog holds %d snapshots, want %d", len(got), want)
	}
	_ = filepath.WalkDir(filepath.Join(e.dataDir, "snapshots"), func(path string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".tmp-") {
			t.Errorf("temporary snapshot directory left: %s", path)
		}
		return nil
	})
}

// machineOf returns the fake machine with the given pid.
func (r *fakeRuntime) machineOf(t *testing.T, pid int) *fakeMachine {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.machines {
		if m.pid == pid {
			return m
		}
	}
	t.Fatalf("no fake machine with pid %d", pid)
	return nil
}

func TestCheckpointFake(t *testing.T) {
	rt := &fakeRuntime{}
	e := newSnapEnv(t, rt, nil)
	ctx := ctxT(t, 10*time.Second)
	s := e.ready(t, CreateRequest{MemoryMiB: 128})
	// Give the sandbox's disk some content of its own.
	if err := os.WriteFile(s.Hardware.Disk, []byte("sandbox-disk-state"), 0o600); err != nil {
		t.Fatal(err)
	}

	meta, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "first"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rt.callLog(), []string{"pause", "snapshot Full", "disk copy", "resume"}; !slices.Equal(got, want) {
		t.Errorf("calls %v, want %v", got, want)
	}
	if meta.Name != "first" || meta.SandboxID != s.ID || meta.Type != snapshot.TypeFull || meta.ParentID != "" ||
		meta.FirecrackerVersion != testFirecrackerVersion || meta.SnapshotVersion != testSnapshotVersion ||
		meta.Hardware.MemoryMiB != 128 || meta.Hardware.Kernel != e.kernel || meta.Hardware.BootArgs != s.Hardware.BootArgs ||
		meta.Vsock == nil || meta.Vsock.CID != GuestCID || meta.Vsock.UDSPath != VsockName || meta.Network != nil ||
		meta.PauseDuration <= 0 {
		t.Errorf("meta %+v", meta)
	}
	if meta.Dir != filepath.Join(e.dataDir, "snapshots", s.ID, meta.ID) {
		t.Errorf("snapshot dir %s", meta.Dir)
	}
	if mem := meta.Files[snapshot.MemName]; mem.Size != 128<<20 || mem.SHA256 == "" {
		t.Errorf("mem file %+v", mem)
	}
	if data, _ := os.ReadFile(filepath.Join(meta.Dir, snapshot.DiskName)); string(data) != "sandbox-disk-state" {
		t.Errorf("snapshot disk %q", data)
	}
	got, _ := e.m.Get(ctx, s.ID)
	if got.State != StateReady || got.LastSnapshotID != meta.ID || got.LastPause != meta.PauseDuration {
		t.Errorf("after checkpoint: state %s last snapshot %s pause %v", got.State, got.LastSnapshotID, got.LastPause)
	}
	if rt.machineOf(t, got.Process.PID).isPaused() {
		t.Error("sandbox left paused")
	}
	ev := e.rec.wait(t, s.ID, ActionCheckpointed, time.Second)
	if ev.State != string(StateReady) || ev.Attributes["snapshot_id"] != meta.ID || ev.Attributes["name"] != "first" ||
		ev.Attributes["type"] != "full" || ev.Attributes["pause_ms"] == "" {
		t.Errorf("checkpointed event %+v", ev)
	}

	// Names are unique per sandbox and validated.
	if _, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "first"}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("duplicate name: %v, want AlreadyExists", err)
	}
	for _, name := range []string{"", "../x", "a/b", ".", "..", ".hidden", "-x", strings.Repeat("n", 65), "sp ace", "é"} {
		if _, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: name}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("name %q: %v, want InvalidArgument", name, err)
		}
	}
	for id, want := range map[string]error{"bad": errdefs.ErrInvalidArgument, "000000000000": errdefs.ErrNotFound} {
		if _, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: id, Name: "x"}); !errors.Is(err, want) {
			t.Errorf("sandbox %q: %v, want %v", id, err, want)
		}
	}
	e.assertNoPartialSnapshot(t, 1)

	// List and delete.
	if l, err := e.m.ListSnapshots(ctx, s.ID); err != nil || len(l) != 1 || l[0].ID != meta.ID {
		t.Errorf("list of %s: %v %v", s.ID, l, err)
	}
	if l, err := e.m.ListSnapshots(ctx, "000000000000"); err != nil || l == nil || len(l) != 0 {
		t.Errorf("list of an unknown sandbox: %v %v", l, err)
	}
	if _, err := e.m.ListSnapshots(ctx, "../x"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("list with a bad id: %v", err)
	}
	for id, want := range map[string]error{"../x": errdefs.ErrInvalidArgument, "000000000000": errdefs.ErrNotFound} {
		if err := e.m.DeleteSnapshot(ctx, id); !errors.Is(err, want) {
			t.Errorf("delete %q: %v, want %v", id, err, want)
		}
	}
	if err := e.m.DeleteSnapshot(ctx, meta.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(meta.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("snapshot dir after delete: %v", err)
	}
}

func TestCheckpointFailuresFake(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name      string
		faults    fakeFaults
		diskErr   error
		wantStep  string
		wantClass error
		wantCalls []string
		// failed: both resumes failed, so the sandbox is FAILED and its
		// VMM killed, never left paused and shown as ready.
		failed bool
	}{
		{"pause", fakeFaults{pauseErr: boom}, nil, "checkpoint: pause: boom", nil,
			[]string{"pause", "resume"}, false},
		{"snapshot create", fakeFaults{snapshotErr: boom}, nil, "checkpoint: snapshot create: boom", nil,
			[]string{"pause", "snapshot Full", "resume"}, false},
		{"snapshot create ENOSPC", fakeFaults{snapshotErr: errors.New("Cannot write memory file: No space left on device (os error 28)")},
			nil, "no space left on device", errdefs.ErrResourceExhausted, []string{"pause", "snapshot Full", "resume"}, false},
		{"disk copy", fakeFaults{}, boom, "checkpoint: disk copy: boom", nil,
			[]string{"pause", "snapshot Full", "disk copy", "resume"}, false},
		{"disk copy ENOSPC", fakeFaults{}, syscall.ENOSPC, "checkpoint: disk copy: no space left on device", errdefs.ErrResourceExhausted,
			[]string{"pause", "snapshot Full", "disk copy", "resume"}, false},
		{"resume", fakeFaults{resumeFails: 2}, nil, "checkpoint: resume", nil,
			[]string{"pause", "snapshot Full", "disk copy", "resume", "resume"}, true},
		{"failure and resume", fakeFaults{snapshotErr: boom, resumeFails: 2}, nil, "resuming the sandbox failed too", nil,
			[]string{"pause", "snapshot Full", "resume", "resume"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &fakeRuntime{}
			e := newSnapEnv(t, rt, nil)
			ctx := ctxT(t, 10*time.Second)
			s := e.ready(t, CreateRequest{TrackDirtyPages: true})
			if _, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "base"}); err != nil {
				t.Fatal(err)
			}
			rt.mu.Lock()
			rt.calls = nil
			rt.mu.Unlock()
			rt.setFaults(tt.faults)
			if tt.diskErr != nil {
				e.m.cloneDisk = func(context.Context, string, string) error {
					rt.record("disk copy")
					return tt.diskErr
				}
			}
			_, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "second"})
			if err == nil || !strings.Contains(err.Error(), tt.wantStep) {
				t.Fatalf("error %v, want it to contain %q", err, tt.wantStep)
			}
			if tt.wantClass != nil && !errors.Is(err, tt.wantClass) {
				t.Errorf("error %v, want class %v", err, tt.wantClass)
			}
			if got := rt.callLog(); !slices.Equal(got, tt.wantCalls) {
				t.Errorf("calls %v, want %v", got, tt.wantCalls)
			}
			got, _ := e.m.Get(ctx, s.ID)
			mach := rt.machineOf(t, s.Process.PID)
			e.assertNoPartialSnapshot(t, 1)
			if tt.failed {
				if got.State != StateFailed || got.Process.PID != 0 || !strings.Contains(got.FailureReason, "did not resume") {
					t.Errorf("after a failed resume: state %s pid %d reason %q, want failed, no pid, the reason",
						got.State, got.Process.PID, got.FailureReason)
				}
				select {
				case <-mach.Done():
				default:
					t.Error("the VMM that did not resume still runs")
				}
				e.rec.expect(t, s.ID, "created/starting", "ready/ready", "checkpointed/ready", "failed/failed")
				if _, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "third"}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
					t.Errorf("checkpoint of the failed sandbox: %v, want FailedPrecondition", err)
				}
				return
			}
			if got.State != StateReady {
				t.Errorf("state %s after a failed checkpoint", got.State)
			}
			if mach.isPaused() {
				t.Error("the sandbox was left paused")
			}
			// Events reach the recorder asynchronously: wait for the first
			// checkpoint's before counting.
			e.rec.wait(t, s.ID, ActionCheckpointed, 5*time.Second)
			if len(e.rec.of(s.ID)) != 3 { // created, ready, checkpointed (the first)
				t.Errorf("events %v", e.rec.actions(s.ID))
			}
			// Once Firecracker was asked for a snapshot its dirty-page log
			// may be reset: the earlier snapshot is no Diff base any more.
			wantBase := ""
			if tt.name == "pause" {
				wantBase = got.LastSnapshotID
				if wantBase == "" {
					t.Error("a failed pause dropped the Diff base")
				}
			}
			if got.LastSnapshotID != wantBase {
				t.Errorf("last snapshot %q after failure at %s", got.LastSnapshotID, tt.name)
			}
			// The name was released.
			rt.setFaults(fakeFaults{})
			e.m.cloneDisk = disk.Clone
			if _, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "second"}); err != nil {
				t.Errorf("checkpoint after the failure: %v", err)
			}
		})
	}
}

func TestCheckpointResumeRetryFake(t *testing.T) {
	rt := &fakeRuntime{}
	e := newSnapEnv(t, rt, nil)
	s := e.ready(t, CreateRequest{})
	rt.setFaults(fakeFaults{resumeFails: 1})
	if _, err := e.m.Checkpoint(t.Context(), CheckpointRequest{SandboxID: s.ID, Name: "x"}); err != nil {
		t.Fatal(err)
	}
	if got, want := rt.callLog(), []string{"pause", "snapshot Full", "disk copy", "resume", "resume"}; !slices.Equal(got, want) {
		t.Errorf("calls %v, want %v", got, want)
	}
	e.assertNoPartialSnapshot(t, 1)
}

func TestCheckpointCommitFailureFake(t *testing.T) {
	rt := &fakeRuntime{}
	e := newSnapEnv(t, rt, nil)
	s := e.ready(t, CreateRequest{})
	// Commit fails when a file is missing: make the disk copy "succeed"
	// without writing anything.
	e.m.cloneDisk = func(context.Context, string, string) error { return nil }
	_, err := e.m.Checkpoint(t.Context(), CheckpointRequest{SandboxID: s.ID, Name: "x"})
	if err == nil || !strings.Contains(err.Error(), "checkpoint: commit") {
		t.Fatalf("error %v", err)
	}
	e.assertNoPartialSnapshot(t, 0)
	if got, _ := e.m.Get(t.Context(), s.ID); got.State != StateReady || rt.machineOf(t, got.Process.PID).isPaused() {
		t.Errorf("state %s", got.State)
	}
}

func TestCheckpointStateChecksFake(t *testing.T) {
	t.Run("not configured", func(t *testing.T) {
		e := newTestEnv(t, t.TempDir(), &fakeRuntime{}, nil)
		ctx := t.Context()
		s, _ := e.m.Create(ctx, CreateRequest{})
		e.waitState(t, s.ID, StateReady, 5*time.Second)
		errs := map[string]error{}
		_, errs["checkpoint"] = e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "x"})
		_, errs["restore"] = e.m.Restore(ctx, RestoreRequest{SnapshotID: "000000000000"})
		_, errs["list"] = e.m.ListSnapshots(ctx, "")
		errs["delete"] = e.m.DeleteSnapshot(ctx, "000000000000")
		for op, err := range errs {
			if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "snapshots are not configured") {
				t.Errorf("%s: %v", op, err)
			}
		}
	})
	t.Run("bad snapshot version in config", func(t *testing.T) {
		var cat *snapshot.Catalog
		dir := t.TempDir()
		mut := withCatalog(t, dir, &cat, nil)
		cfg := Config{DataDir: dir, Events: nil}
		mut(&cfg)
		cfg.SnapshotVersion = "ten"
		if _, err := newManager(cfg, &fakeRuntime{}); err == nil || !strings.Contains(err.Error(), "snapshot version") {
			t.Errorf("config with a bad snapshot version: %v", err)
		}
	})
	t.Run("states", func(t *testing.T) {
		rt := &fakeRuntime{startDelay: 300 * time.Millisecond}
		e := newSnapEnv(t, rt, nil)
		ctx := ctxT(t, 10*time.Second)
		s, _ := e.m.Create(ctx, CreateRequest{})
		if _, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "x"}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("checkpoint while starting: %v", err)
		}
		e.waitState(t, s.ID, StateReady, 5*time.Second)
		if _, err := e.m.Stop(ctx, s.ID, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "x"}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("checkpoint when stopped: %v", err)
		}
		e.assertNoPartialSnapshot(t, 0)
	})
}

func TestCheckpointDiffFake(t *testing.T) {
	rt := &fakeRuntime{}
	e := newSnapEnv(t, rt, nil)
	ctx := ctxT(t, 10*time.Second)

	plain := e.ready(t, CreateRequest{})
	if _, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: plain.ID, Name: "d", Diff: true}); !errors.Is(err, errdefs.ErrFailedPrecondition) ||
		!strings.Contains(err.Error(), "dirty page tracking") {
		t.Errorf("diff without tracking: %v", err)
	}
	tracked := e.ready(t, CreateRequest{TrackDirtyPages: true})
	if _, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: tracked.ID, Name: "d", Diff: true}); !errors.Is(err, errdefs.ErrFailedPrecondition) ||
		!strings.Contains(err.Error(), "needs an earlier checkpoint") {
		t.Errorf("diff without a base: %v", err)
	}
	if len(rt.callLog()) != 0 {
		t.Errorf("refused diffs touched the VM: %v", rt.callLog())
	}
	full, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: tracked.ID, Name: "full"})
	if err != nil {
		t.Fatal(err)
	}
	diff, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: tracked.ID, Name: "diff", Diff: true})
	if err != nil {
		t.Fatal(err)
	}
	if diff.Type != snapshot.TypeDiff || diff.ParentID != full.ID || diff.Files[snapshot.MemName].Size != full.Files[snapshot.MemName].Size {
		t.Errorf("diff meta %+v", diff)
	}
	// The stored memory is complete: the base's page 0 and the layer's page 1.
	mem := make([]byte, 8192)
	if f, err := os.Open(filepath.Join(diff.Dir, snapshot.MemName)); err != nil {
		t.Fatal(err)
	} else {
		_, err = f.ReadAt(mem, 0)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.HasPrefix(mem, []byte("fake-memory-Full")) || !bytes.HasPrefix(mem[4096:], []byte("fake-memory-Diff")) {
		t.Errorf("merged memory: %q / %q", mem[:16], mem[4096:4112])
	}
	if entries, _ := os.ReadDir(diff.Dir); len(entries) != 4 {
		t.Errorf("diff snapshot files: %v", entries)
	}
	ev := e.rec.wait(t, tracked.ID, ActionCheckpointed, time.Second)
	_ = ev
	// A second Diff builds on the first.
	diff2, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: tracked.ID, Name: "diff2", Diff: true})
	if err != nil || diff2.ParentID != diff.ID {
		t.Fatalf("second diff: %v, parent %s", err, diff2.ParentID)
	}
	// A deleted base cannot be built on.
	if err := e.m.DeleteSnapshot(ctx, diff2.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: tracked.ID, Name: "diff3", Diff: true}); !errors.Is(err, errdefs.ErrFailedPrecondition) ||
		!strings.Contains(err.Error(), "was deleted") {
		t.Errorf("diff on a deleted base: %v", err)
	}
	e.assertNoPartialSnapshot(t, 2)
}

func TestConcurrentCheckpointAndStopFake(t *testing.T) {
	t.Run("checkpoint first", func(t *testing.T) {
		rt := &fakeRuntime{}
		e := newSnapEnv(t, rt, nil)
		ctx := ctxT(t, 10*time.Second)
		s := e.ready(t, CreateRequest{})
		inCopy, release := make(chan struct{}), make(chan struct{})
		e.m.cloneDisk = func(ctx context.Context, src, dst string) error {
			close(inCopy)
			<-release
			return disk.Clone(ctx, src, dst)
		}
		type result struct {
			meta snapshot.Meta
			err  error
		}
		cp := make(chan result, 1)
		go func() {
			m, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "x"})
			cp <- result{m, err}
		}()
		<-inCopy
		stopped := make(chan error, 1)
		go func() {
			_, err := e.m.Stop(ctx, s.ID, 0)
			stopped <- err
		}()
		select {
		case err := <-stopped:
			t.Fatalf("stop finished during the checkpoint: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
		close(release)
		r := <-cp
		if r.err != nil {
			t.Fatalf("checkpoint: %v", r.err)
		}
		if err := <-stopped; err != nil {
			t.Fatalf("stop: %v", err)
		}
		e.assertNoPartialSnapshot(t, 1)
		e.rec.expect(t, s.ID, "created/starting", "ready/ready", "checkpointed/ready", "stopping/stopping", "stopped/stopped")
	})
	t.Run("stop first", func(t *testing.T) {
		rt := &fakeRuntime{}
		e := newSnapEnv(t, rt, nil)
		ctx := ctxT(t, 10*time.Second)
		s := e.ready(t, CreateRequest{})
		if _, err := e.m.Stop(ctx, s.ID, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "x"}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("checkpoint after stop: %v", err)
		}
		e.assertNoPartialSnapshot(t, 0)
	})
}

func TestRestoreFake(t *testing.T) {
	rt := &fakeRuntime{}
	e := newSnapEnv(t, rt, nil)
	ctx := ctxT(t, 10*time.Second)
	src := e.ready(t, CreateRequest{TrackDirtyPages: true, MemoryMiB: 160, VCPUs: 2})
	if err := os.WriteFile(src.Hardware.Disk, []byte("at-checkpoint"), 0o600); err != nil {
		t.Fatal(err)
	}
	meta, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: src.ID, Name: "snap"})
	if err != nil {
		t.Fatal(err)
	}
	// The original goes on writing its disk; the snapshot keeps its copy.
	if err := os.WriteFile(src.Hardware.Disk, []byte("after-checkpoint"), 0o600); err != nil {
		t.Fatal(err)
	}

	r, err := e.m.Restore(ctx, RestoreRequest{SnapshotID: meta.ID, Labels: map[string]string{"clone": "1"}, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if r.State != StateStarting || r.ID == src.ID || r.RestoredFrom != meta.ID || r.LastSnapshotID != meta.ID ||
		r.Labels["clone"] != "1" || r.TTL != time.Hour || r.ExpiresAt.IsZero() ||
		r.Hardware.VCPUs != 2 || r.Hardware.MemoryMiB != 160 || !r.Hardware.TrackDirtyPages || r.Hardware.Kernel != e.kernel ||
		r.Hardware.Disk != filepath.Join(r.Dir, DiskName) || r.Process.VsockPath != filepath.Join(r.Dir, VsockName) {
		t.Errorf("restored record %+v", r)
	}
	ready := e.waitState(t, r.ID, StateReady, 5*time.Second)
	e.rec.expect(t, r.ID, "restored/starting", "ready/ready")
	if ev := e.rec.of(r.ID)[0]; ev.Attributes["snapshot_id"] != meta.ID {
		t.Errorf("restored event %+v", ev)
	}
	rt.mu.Lock()
	spec := rt.restores[0]
	rt.mu.Unlock()
	if spec.Dir != r.Dir || spec.SnapshotPath != filepath.Join(r.Dir, SnapshotStateName) || spec.MemFilePath != filepath.Join(r.Dir, SnapshotMemName) ||
		!spec.ResumeVM || !spec.TrackDirtyPages || spec.VsockPath != VsockName || spec.NetNS != "" || spec.NetworkOverrides != nil ||
		spec.APISocket != filepath.Join(r.Dir, SocketName) || spec.Logging.LogPath != filepath.Join(r.Dir, LogName) {
		t.Errorf("restore spec %+v", spec)
	}
	if data, _ := os.ReadFile(ready.Hardware.Disk); string(data) != "at-checkpoint" {
		t.Errorf("restored disk %q", data)
	}
	for name, snapName := range map[string]string{SnapshotStateName: snapshot.VMStateName, SnapshotMemName: snapshot.MemName} {
		a, err1 := os.Stat(filepath.Join(r.Dir, name))
		b, err2 := os.Stat(filepath.Join(meta.Dir, snapName))
		if err1 != nil || err2 != nil || !os.SameFile(a, b) {
			t.Errorf("%s is not a link of the snapshot's %s: %v %v", name, snapName, err1, err2)
		}
	}

	// The snapshot can be deleted while the restored sandbox runs; the
	// restored sandbox checkpoints (a Diff on the snapshot it came from
	// needs that snapshot) and is removed like any other.
	diff, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: r.ID, Name: "clone-diff", Diff: true})
	if err != nil || diff.ParentID != meta.ID || diff.SandboxID != r.ID {
		t.Fatalf("diff of the restored sandbox: %v (parent %q)", err, diff.ParentID)
	}
	if err := e.m.DeleteSnapshot(ctx, meta.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(r.Dir, SnapshotMemName)); err != nil {
		t.Errorf("restored sandbox lost its memory file: %v", err)
	}
	if _, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: r.ID, Name: "clone-full"}); err != nil {
		t.Fatal(err)
	}
	r2, err := e.m.Restore(ctx, RestoreRequest{SnapshotID: diff.ID})
	if err != nil {
		t.Fatal(err)
	}
	e.waitState(t, r2.ID, StateReady, 5*time.Second)
	for _, id := range []string{r.ID, r2.ID, src.ID} {
		if err := e.m.Remove(ctx, id, true); err != nil {
			t.Fatal(err)
		}
	}
	if dirs := e.sandboxDirs(t); len(dirs) != 0 {
		t.Errorf("sandbox dirs left: %v", dirs)
	}
}

func TestRestoreValidationFake(t *testing.T) {
	rt := &fakeRuntime{}
	e := newSnapEnv(t, rt, func(c *Config) { c.MaxSandboxes = 2 })
	ctx := ctxT(t, 10*time.Second)
	src := e.ready(t, CreateRequest{})
	meta, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: src.ID, Name: "snap"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		req     RestoreRequest
		binary  string // the installed snapshot format version
		want    error
		wantMsg string
	}{
		{"bad id", RestoreRequest{SnapshotID: "../etc"}, "", errdefs.ErrInvalidArgument, "snapshot id"},
		{"unknown id", RestoreRequest{SnapshotID: "000000000000"}, "", errdefs.ErrNotFound, ""},
		{"bad label", RestoreRequest{SnapshotID: meta.ID, Labels: map[string]string{"-bad": "x"}}, "", errdefs.ErrInvalidArgument, "label"},
		{"negative ttl", RestoreRequest{SnapshotID: meta.ID, TTL: -time.Second}, "", errdefs.ErrInvalidArgument, "ttl"},
		{"huge ttl", RestoreRequest{SnapshotID: meta.ID, TTL: MaxTTL + time.Hour}, "", errdefs.ErrInvalidArgument, "ttl"},
		{"older major binary", RestoreRequest{SnapshotID: meta.ID}, "9.0.0", errdefs.ErrFailedPrecondition, "cannot load"},
		{"newer major binary", RestoreRequest{SnapshotID: meta.ID}, "11.0.0", errdefs.ErrFailedPrecondition, "cannot load"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.binary != "" {
				e.m.cfg.SnapshotVersion = tt.binary
				defer func() { e.m.cfg.SnapshotVersion = testSnapshotVersion }()
			}
			_, err := e.m.Restore(ctx, tt.req)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %v, want %v containing %q", err, tt.want, tt.wantMsg)
			}
		})
	}

	// The cap counts restores: one more fits, the next does not.
	r, err := e.m.Restore(ctx, RestoreRequest{SnapshotID: meta.ID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Restore(ctx, RestoreRequest{SnapshotID: meta.ID}); !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Errorf("restore past the cap: %v", err)
	}
	if err := e.m.Remove(ctx, r.ID, true); err != nil {
		t.Fatal(err)
	}

	// A failure while preparing the sandbox leaves nothing.
	e.m.cloneDisk = func(context.Context, string, string) error { return syscall.ENOSPC }
	if _, err := e.m.Restore(ctx, RestoreRequest{SnapshotID: meta.ID}); err == nil || !strings.Contains(err.Error(), "copying the snapshot's disk") {
		t.Errorf("restore with a failing disk copy: %v", err)
	}
	e.m.cloneDisk = disk.Clone

	// A damaged snapshot is refused.
	if err := os.Truncate(filepath.Join(meta.Dir, snapshot.MemName), 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Restore(ctx, RestoreRequest{SnapshotID: meta.ID}); !errors.Is(err, errdefs.ErrFailedPrecondition) ||
		!strings.Contains(err.Error(), "damaged") {
		t.Errorf("restore of a damaged snapshot: %v", err)
	}

	rt.mu.Lock()
	restores := len(rt.restores)
	rt.mu.Unlock()
	if restores != 1 {
		t.Errorf("%d VMM restores started, want 1 (only the valid request)", restores)
	}
	if dirs := e.sandboxDirs(t); !slices.Equal(dirs, []string{src.ID}) {
		t.Errorf("sandbox dirs %v, want only %s", dirs, src.ID)
	}
	// No pin is left behind: the snapshot deletes at once.
	dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := e.m.DeleteSnapshot(dctx, meta.ID); err != nil {
		t.Errorf("delete after the failed restores: %v", err)
	}
}

func TestRestoreFailsInBackgroundFake(t *testing.T) {
	rt := &fakeRuntime{}
	e := newSnapEnv(t, rt, nil)
	ctx := ctxT(t, 10*time.Second)
	src := e.ready(t, CreateRequest{})
	meta, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: src.ID, Name: "snap"})
	if err != nil {
		t.Fatal(err)
	}
	rt.setFaults(fakeFaults{restoreErr: errors.New("snapshot/load: bad vmstate")})
	r, err := e.m.Restore(ctx, RestoreRequest{SnapshotID: meta.ID})
	if err != nil {
		t.Fatal(err)
	}
	ev := e.rec.wait(t, r.ID, ActionFailed, 5*time.Second)
	got, _ := e.m.Get(ctx, r.ID)
	if got.State != StateFailed || !strings.Contains(got.FailureReason, "bad vmstate") || !strings.Contains(ev.Attributes["reason"], "bad vmstate") {
		t.Errorf("state %s reason %q", got.State, got.FailureReason)
	}
	if err := e.m.Remove(ctx, r.ID, false); err != nil {
		t.Fatal(err)
	}
}

func TestCheckSnapshotVersion(t *testing.T) {
	tests := []struct {
		snap, binary string
		ok           bool
	}{
		{"10.0.0", "10.0.0", true},
		{"10.0.0", "v10.2.1", true},
		{"v10.1.0", "10.1.0", true},
		{"10.0.3", "10.0.0", true}, // the patch level does not matter
		{"10.1.0", "10.0.0", false},
		{"9.0.0", "10.0.0", false},
		{"11.0.0", "10.0.0", false},
		{"", "10.0.0", false},
		{"10.0", "10.0.0", false},
		{"10.x.0", "10.0.0", false},
		{"10.0.0", "", false},
	}
	for _, tt := range tests {
		err := checkSnapshotVersion(tt.snap, tt.binary)
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, errdefs.ErrFailedPrecondition)) {
			t.Errorf("snapshot %q on binary %q: %v, want ok=%v", tt.snap, tt.binary, err, tt.ok)
		}
	}
}

// fakeNetworker hands out attachments with distinct addresses and a
// distinct guest MAC per sandbox; failFor makes Attach fail, verifyErr
// Verify.
type fakeNetworker struct {
	mu        sync.Mutex
	n         int
	attached  map[string]bool
	failFor   int   // the failFor-th Attach fails (1-based; 0: never)
	verifyErr error // what Verify returns
	verified  []string
}

func (f *fakeNetworker) Attach(_ context.Context, id string) (network.Attachment, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	if f.n == f.failFor {
		return network.Attachment{}, errors.New("no addresses left")
	}
	if f.attached == nil {
		f.attached = map[string]bool{}
	}
	f.attached[id] = true
	return network.Attachment{
		SandboxID: id, Netns: "vmm-" + id, NetnsPath: "/run/netns/vmm-" + id, TAP: "tap0",
		IP: netip.AddrFrom4([4]byte{10, 0, 0, byte(10 + f.n)}), PrefixLen: 24, Gateway: netip.MustParseAddr("10.0.0.1"),
		GuestIP: netip.MustParseAddr("172.16.0.2"), GuestMAC: fmt.Sprintf("06:00:ac:10:00:%02x", f.n),
		BootArg: "ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off",
	}, nil
}

func (f *fakeNetworker) Detach(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.attached, id)
	return nil
}

func (f *fakeNetworker) Reserve(string, netip.Addr) error { return nil }

func (f *fakeNetworker) ListNetns() ([]string, error) { return nil, nil }

func (f *fakeNetworker) Verify(_ context.Context, id string, _ netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.verified = append(f.verified, id)
	return f.verifyErr
}

func (f *fakeNetworker) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.attached)
}

func TestRestoreNetworkFake(t *testing.T) {
	rt := &fakeRuntime{}
	nw := &fakeNetworker{failFor: 3}
	e := newSnapEnv(t, rt, func(c *Config) { c.Network = nw })
	ctx := ctxT(t, 10*time.Second)
	src := e.ready(t, CreateRequest{})
	meta, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: src.ID, Name: "net"})
	if err != nil {
		t.Fatal(err)
	}
	if meta.Network == nil || meta.Network.GuestMAC != src.Network.MAC || meta.Network.GuestIP != "172.16.0.2" ||
		meta.Network.TAP != "tap0" || meta.Network.NICID != network.NICID {
		t.Errorf("snapshot network %+v", meta.Network)
	}
	r, err := e.m.Restore(ctx, RestoreRequest{SnapshotID: meta.ID})
	if err != nil {
		t.Fatal(err)
	}
	e.waitState(t, r.ID, StateReady, 5*time.Second)
	// New host side, the guest identity of the snapshot.
	if r.Network.IP == src.Network.IP || r.Network.Netns != "vmm-"+r.ID ||
		r.Network.MAC != src.Network.MAC || r.Network.GuestIP != src.Network.GuestIP || r.Hardware.BootArgs != src.Hardware.BootArgs {
		t.Errorf("restored network %+v (source %+v)", r.Network, src.Network)
	}
	rt.mu.Lock()
	spec := rt.restores[0]
	rt.mu.Unlock()
	if spec.NetNS != "/run/netns/vmm-"+r.ID || spec.NetworkOverrides != nil {
		t.Errorf("restore spec netns %q overrides %v", spec.NetNS, spec.NetworkOverrides)
	}
	// The third Attach fails: nothing is left of that restore.
	if _, err := e.m.Restore(ctx, RestoreRequest{SnapshotID: meta.ID}); err == nil || !strings.Contains(err.Error(), "restore: network") {
		t.Errorf("restore with a failing network: %v", err)
	}
	if got := nw.count(); got != 2 {
		t.Errorf("%d attachments, want 2", got)
	}
	if dirs := e.sandboxDirs(t); len(dirs) != 2 {
		t.Errorf("sandbox dirs %v, want 2", dirs)
	}
	// A manager without networking refuses a snapshot with a NIC.
	e.m.cfg.Network, e.m.networked = noNetwork{}, false
	_, err = e.m.Restore(ctx, RestoreRequest{SnapshotID: meta.ID})
	e.m.cfg.Network, e.m.networked = nw, true
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "networking is not configured") {
		t.Errorf("restore without networking: %v", err)
	}
}
