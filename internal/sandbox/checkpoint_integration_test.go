package sandbox

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/firecracker"
	"github.com/firecracker-vmm/firecracker-vmm/internal/snapshot"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// emuSnapEnv is emuEnv with a real snapshot catalog.
func emuSnapEnv(t *testing.T, env ...string) (*snapEnv, string) {
	t.Helper()
	var cat *snapshot.Catalog
	var dataDir string
	e, exe := emuEnv(t, func(c *Config) {
		dataDir = c.DataDir
		withCatalog(t, dataDir, &cat, nil)(c)
	}, env...)
	return &snapEnv{testEnv: e, cat: cat}, exe
}

// vmState asks the sandbox's VMM for its state (GET /).
func vmState(t *testing.T, s Sandbox) firecracker.InstanceState {
	t.Helper()
	c := firecracker.NewClient(s.Process.APISocket)
	defer c.Close()
	info, err := c.DescribeInstance(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatalf("GET / of %s: %v", s.ID, err)
	}
	return info.State
}

// isSocket reports whether path is a bound unix socket.
func isSocket(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}

// openFiles returns the files process pid has open.
func openFiles(t *testing.T, pid int) []string {
	t.Helper()
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("open files of %d: %v", pid, err)
	}
	var out []string
	for _, en := range entries {
		if target, err := os.Readlink(filepath.Join(dir, en.Name())); err == nil {
			out = append(out, target)
		}
	}
	return out
}

// TestEmulatorCheckpointRestore checkpoints a running sandbox, restores it
// twice while it runs (three VMMs, each in its own directory with its own
// disk and vsock socket), takes a Diff checkpoint and restores from it,
// checkpoints a restored sandbox, and restores after the original was
// removed.
func TestEmulatorCheckpointRestore(t *testing.T) {
	e, exe := emuSnapEnv(t)
	ctx := ctxT(t, 60*time.Second)
	s, err := e.m.Create(ctx, CreateRequest{TrackDirtyPages: true})
	if err != nil {
		t.Fatal(err)
	}
	orig := e.waitState(t, s.ID, StateReady, 15*time.Second)
	if !isSocket(orig.Process.VsockPath) || orig.Process.VsockPath != filepath.Join(orig.Dir, VsockName) {
		t.Fatalf("vsock socket %s not bound", orig.Process.VsockPath)
	}

	base, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: orig.ID, Name: "base"})
	if err != nil {
		t.Fatal(err)
	}
	if st := vmState(t, orig); st != firecracker.StateRunning {
		t.Errorf("original is %s after the checkpoint", st)
	}
	if base.SnapshotVersion != testSnapshotVersion || base.Files[snapshot.MemName].Size != 128<<20 {
		t.Errorf("meta %+v", base)
	}
	t.Logf("checkpoint paused the sandbox for %v", base.PauseDuration)

	// Two restores while the original runs.
	var clones []Sandbox
	for range 2 {
		r, err := e.m.Restore(ctx, RestoreRequest{SnapshotID: base.ID})
		if err != nil {
			t.Fatal(err)
		}
		clones = append(clones, e.waitState(t, r.ID, StateReady, 15*time.Second))
	}
	all := append([]Sandbox{orig}, clones...)
	if got := len(testutil.ProcessesOf(exe)); got != 3 {
		t.Errorf("%d emulator processes, want 3", got)
	}
	dirs, vsocks := map[string]bool{}, map[string]bool{}
	for _, sb := range all {
		dirs[sb.Dir] = true
		vsocks[sb.Process.VsockPath] = true
		if !isSocket(sb.Process.VsockPath) || filepath.Dir(sb.Process.VsockPath) != sb.Dir {
			t.Errorf("%s: vsock socket %s not bound in its directory", sb.ID, sb.Process.VsockPath)
		}
		if st := vmState(t, sb); st != firecracker.StateRunning {
			t.Errorf("%s is %s", sb.ID, st)
		}
	}
	if len(dirs) != 3 || len(vsocks) != 3 {
		t.Errorf("directories %v, vsock sockets %v: want 3 distinct", dirs, vsocks)
	}
	for _, c := range clones {
		// The clone's VMM uses the clone's own disk and memory file.
		files := openFiles(t, c.Process.PID)
		for _, want := range []string{filepath.Join(c.Dir, DiskName), filepath.Join(c.Dir, SnapshotMemName)} {
			if !slices.Contains(files, want) {
				t.Errorf("clone %s: VMM does not hold %s open (open: %v)", c.ID, want, files)
			}
		}
		if slices.Contains(files, orig.Hardware.Disk) {
			t.Errorf("clone %s writes the original's disk", c.ID)
		}
		if c.RestoredFrom != base.ID || c.Hardware.MemoryMiB != orig.Hardware.MemoryMiB || !c.Hardware.TrackDirtyPages {
			t.Errorf("clone record %+v", c)
		}
	}

	// A Diff checkpoint of the original, and a restore from it.
	diff, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: orig.ID, Name: "diff", Diff: true})
	if err != nil {
		t.Fatal(err)
	}
	if diff.Type != snapshot.TypeDiff || diff.ParentID != base.ID {
		t.Errorf("diff meta %+v", diff)
	}
	fromDiff, err := e.m.Restore(ctx, RestoreRequest{SnapshotID: diff.ID})
	if err != nil {
		t.Fatal(err)
	}
	e.waitState(t, fromDiff.ID, StateReady, 15*time.Second)

	// A restored sandbox checkpoints like any other, Full and Diff.
	cloneFull, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: clones[0].ID, Name: "clone"})
	if err != nil {
		t.Fatal(err)
	}
	cloneDiff, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: clones[1].ID, Name: "clone-diff", Diff: true})
	if err != nil || cloneDiff.ParentID != base.ID {
		t.Fatalf("diff of a restored sandbox: %v (parent %q)", err, cloneDiff.ParentID)
	}
	if st := vmState(t, clones[0]); st != firecracker.StateRunning {
		t.Errorf("checkpointed clone is %s", st)
	}

	// Restore after the original is gone.
	if err := e.m.Remove(ctx, orig.ID, true); err != nil {
		t.Fatal(err)
	}
	later, err := e.m.Restore(ctx, RestoreRequest{SnapshotID: base.ID, Labels: map[string]string{"after": "removal"}})
	if err != nil {
		t.Fatal(err)
	}
	later = e.waitState(t, later.ID, StateReady, 15*time.Second)
	if l, _ := e.m.ListSnapshots(ctx, orig.ID); len(l) != 2 {
		t.Errorf("snapshots of the removed sandbox: %d, want 2", len(l))
	}
	if l, _ := e.m.ListSnapshots(ctx, ""); len(l) != 4 {
		t.Errorf("all snapshots: %d, want 4 (base, diff, clone, clone-diff): %v", len(l), cloneFull.ID)
	}

	// Stopping a restored sandbox cleans its sockets.
	if _, err := e.m.Stop(ctx, later.ID, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if exists(later.Process.VsockPath) || exists(later.Process.APISocket) {
		t.Errorf("sockets left after stop: vsock %v api %v", exists(later.Process.VsockPath), exists(later.Process.APISocket))
	}
	ev := e.rec.wait(t, later.ID, ActionStopped, time.Second)
	if ev.Attributes["exit_code"] != "0" {
		t.Errorf("restored sandbox did not stop cleanly: %v", ev.Attributes)
	}
	for _, id := range []string{later.ID, clones[0].ID, clones[1].ID, fromDiff.ID} {
		if err := e.m.Remove(ctx, id, true); err != nil {
			t.Fatal(err)
		}
	}
	if pids := testutil.ProcessesOf(exe); len(pids) != 0 {
		t.Errorf("processes left: %v", pids)
	}
	if d := e.sandboxDirs(t); len(d) != 0 {
		t.Errorf("sandbox dirs left: %v", d)
	}
	e.assertNoPartialSnapshot(t, 4)
}

// TestEmulatorCheckpointFaults injects a failure at each step of a
// checkpoint: the sandbox stays ready and running and no snapshot remains,
// or, when the VM cannot be resumed, the sandbox fails and its VMM is
// killed.
func TestEmulatorCheckpointFaults(t *testing.T) {
	tests := []struct {
		name      string
		faults    string
		breakDisk bool   // remove the sandbox's disk file before the checkpoint
		wantErr   string // empty: the checkpoint succeeds
		wantClass error
		wantState firecracker.InstanceState
	}{
		{name: "snapshot create, disk full", faults: "fail PUT /snapshot/create=No space left on device (os error 28)",
			wantErr: "checkpoint: snapshot create", wantClass: errdefs.ErrResourceExhausted, wantState: firecracker.StateRunning},
		{name: "pause", faults: "fail PATCH /vm#Paused", wantErr: "checkpoint: pause", wantState: firecracker.StateRunning},
		{name: "disk copy", breakDisk: true, wantErr: "checkpoint: disk copy", wantState: firecracker.StateRunning},
		{name: "first resume", faults: "fail PATCH /vm#Resumed@1", wantState: firecracker.StateRunning},
		{name: "every resume", faults: "fail PATCH /vm#Resumed", wantErr: "checkpoint: resume"}, // failed
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var env []string
			if tt.faults != "" {
				env = append(env, "FCEMU_FAULTS="+tt.faults)
			}
			e, exe := emuSnapEnv(t, env...)
			ctx := ctxT(t, 30*time.Second)
			s, err := e.m.Create(ctx, CreateRequest{})
			if err != nil {
				t.Fatal(err)
			}
			s = e.waitState(t, s.ID, StateReady, 15*time.Second)
			if tt.breakDisk {
				if err := os.Remove(s.Hardware.Disk); err != nil {
					t.Fatal(err)
				}
			}
			meta, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "snap"})
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("checkpoint: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("checkpoint error %v, want %q", err, tt.wantErr)
			case tt.wantClass != nil && !errors.Is(err, tt.wantClass):
				t.Errorf("error %v, want class %v", err, tt.wantClass)
			}
			if tt.wantClass == errdefs.ErrResourceExhausted && !strings.Contains(err.Error(), "no space left on device") {
				t.Errorf("error %q does not say the disk is full", err)
			}
			if tt.wantState == "" {
				// Not resumed: failed, the VMM killed.
				if got, _ := e.m.Get(ctx, s.ID); got.State != StateFailed || got.Process.PID != 0 {
					t.Errorf("state %s pid %d, want failed without a VMM", got.State, got.Process.PID)
				}
				if pids := testutil.ProcessesOf(exe); len(pids) != 0 {
					t.Errorf("the VMM that did not resume still runs: %v", pids)
				}
				e.assertNoPartialSnapshot(t, 0)
				if err := e.m.Remove(ctx, s.ID, false); err != nil {
					t.Fatal(err)
				}
				return
			}
			if got, _ := e.m.Get(ctx, s.ID); got.State != StateReady {
				t.Errorf("state %s", got.State)
			}
			if st := vmState(t, s); st != tt.wantState {
				t.Errorf("GET / says %s, want %s", st, tt.wantState)
			}
			want := 0
			if tt.wantErr == "" {
				want = 1
				if meta.ID == "" {
					t.Error("no snapshot returned")
				}
			}
			e.assertNoPartialSnapshot(t, want)
			if _, err := e.m.Stop(ctx, s.ID, 2*time.Second); err != nil {
				t.Fatal(err)
			}
			if pids := testutil.ProcessesOf(exe); len(pids) != 0 {
				t.Errorf("processes left: %v", pids)
			}
		})
	}
}

// TestEmulatorHungCheckpoint hangs the emulator in PUT /snapshot/create
// (it then serves no other request: both resumes hang too). Once the
// bounded calls give up, the sandbox is FAILED and its VMM killed, never
// a paused VM shown as ready; a Remove --force during the hang, bounded
// far below the calls' own bounds, preempts the checkpoint and returns
// promptly, leaving nothing.
func TestEmulatorHungCheckpoint(t *testing.T) {
	for _, preempt := range []bool{false, true} {
		name := "bounded"
		if preempt {
			name = "remove --force preempts"
		}
		t.Run(name, func(t *testing.T) {
			e, exe := emuSnapEnv(t, "FCEMU_FAULTS=hang PUT /snapshot/create")
			if !preempt {
				e.m.calls = callTimeouts{pause: 10 * time.Second, snapshot: 100 * time.Millisecond, resume: 100 * time.Millisecond}
			}
			ctx := ctxT(t, 60*time.Second)
			s, err := e.m.Create(ctx, CreateRequest{})
			if err != nil {
				t.Fatal(err)
			}
			s = e.waitState(t, s.ID, StateReady, 15*time.Second)
			cpErr := make(chan error, 1)
			go func() {
				_, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "hung"})
				cpErr <- err
			}()
			if !preempt {
				if err := <-cpErr; err == nil || !strings.Contains(err.Error(), "resuming the sandbox failed too") {
					t.Fatalf("checkpoint: %v, want the snapshot and the resume failed", err)
				}
				got, _ := e.m.Get(ctx, s.ID)
				if got.State != StateFailed || !strings.Contains(got.FailureReason, "did not resume") {
					t.Errorf("state %s reason %q, want failed", got.State, got.FailureReason)
				}
				if pids := testutil.ProcessesOf(exe); len(pids) != 0 {
					t.Errorf("the hung VMM still runs: %v", pids)
				}
				if err := e.m.Remove(ctx, s.ID, false); err != nil {
					t.Fatal(err)
				}
			} else {
				// The checkpoint holds the lock once its pending snapshot
				// exists.
				for len(pendingSnapshots(t, e)) == 0 {
					select {
					case err := <-cpErr:
						t.Fatalf("checkpoint returned: %v", err)
					case <-time.After(5 * time.Millisecond):
					}
				}
				rctx := ctxT(t, 5*time.Second)
				if err := e.m.Remove(rctx, s.ID, true); err != nil {
					t.Fatalf("remove --force during the hung checkpoint: %v", err)
				}
				if err := <-cpErr; !errors.Is(err, errdefs.ErrAborted) {
					t.Errorf("the preempted checkpoint: %v, want Aborted", err)
				}
			}
			e.assertNoPartialSnapshot(t, 0)
			if dirs := e.sandboxDirs(t); len(dirs) != 0 {
				t.Errorf("left behind: %v", dirs)
			}
			if pids := testutil.ProcessesOf(exe); len(pids) != 0 {
				t.Errorf("processes left: %v", pids)
			}
		})
	}
}

// pendingSnapshots lists the catalog's temporary snapshot directories.
func pendingSnapshots(t *testing.T, e *snapEnv) []string {
	t.Helper()
	var out []string
	_ = filepath.WalkDir(filepath.Join(e.dataDir, "snapshots"), func(path string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".tmp-") {
			out = append(out, path)
		}
		return nil
	})
	return out
}

// TestEmulatorConcurrentCheckpointAndStop races a checkpoint and a stop on
// one sandbox: either the checkpoint completes and the stop follows, or the
// stop wins and the checkpoint fails with FailedPrecondition; never a
// partial snapshot or a half-stopped sandbox.
func TestEmulatorConcurrentCheckpointAndStop(t *testing.T) {
	e, exe := emuSnapEnv(t)
	ctx := ctxT(t, 60*time.Second)
	outcomes := map[string]int{}
	for i := range 4 {
		s, err := e.m.Create(ctx, CreateRequest{})
		if err != nil {
			t.Fatal(err)
		}
		e.waitState(t, s.ID, StateReady, 15*time.Second)
		var wg sync.WaitGroup
		var cpErr, stopErr error
		start := make(chan struct{})
		wg.Go(func() {
			<-start
			_, cpErr = e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "race"})
		})
		wg.Go(func() {
			<-start
			if i%2 == 1 {
				time.Sleep(time.Millisecond)
			}
			_, stopErr = e.m.Stop(ctx, s.ID, 2*time.Second)
		})
		close(start)
		wg.Wait()
		if stopErr != nil {
			t.Fatalf("stop: %v", stopErr)
		}
		switch {
		case cpErr == nil:
			outcomes["checkpoint first"]++
			if len(e.cat.List(s.ID)) != 1 {
				t.Errorf("checkpoint succeeded but the catalog has %v", e.cat.List(s.ID))
			}
		case errors.Is(cpErr, errdefs.ErrFailedPrecondition):
			outcomes["stop first"]++
			if len(e.cat.List(s.ID)) != 0 {
				t.Errorf("checkpoint failed but the catalog has %v", e.cat.List(s.ID))
			}
		default:
			t.Errorf("checkpoint: %v", cpErr)
		}
		if got, _ := e.m.Get(ctx, s.ID); got.State != StateStopped {
			t.Errorf("state %s after stop", got.State)
		}
		if err := e.m.Remove(ctx, s.ID, false); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("outcomes: %v", outcomes)
	if pids := testutil.ProcessesOf(exe); len(pids) != 0 {
		t.Errorf("processes left: %v", pids)
	}
	_ = filepath.WalkDir(filepath.Join(e.dataDir, "snapshots"), func(path string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".tmp-") {
			t.Errorf("temporary snapshot directory left: %s", path)
		}
		return nil
	})
}
