package sandbox

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// A VMM that stops answering during a checkpoint (the emulator's "hang
// PUT /snapshot/create") never leaves a paused VM shown as ready: once the
// bounded calls give up the sandbox is FAILED and its VMM killed.
func TestCheckpointHungVMMFailsSandboxFake(t *testing.T) {
	tests := []struct {
		name   string
		faults fakeFaults
		// snapshotBound bounds snapshot create and the disk copy.
		snapshotBound time.Duration
		// wantErr is part of the checkpoint's error.
		wantErr string
	}{
		{"snapshot and resume hang", fakeFaults{hangSnapshot: true, hangResume: true}, time.Millisecond,
			"resuming the sandbox failed too"},
		{"resume hangs", fakeFaults{hangResume: true}, time.Minute, "checkpoint: resume"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &fakeRuntime{}
			e := newSnapEnv(t, rt, nil)
			// The bounds of the hung calls give up at once; what is tested
			// is what follows.
			e.m.calls = callTimeouts{pause: time.Minute, snapshot: tt.snapshotBound, resume: time.Millisecond}
			ctx := ctxT(t, 30*time.Second)
			s := e.ready(t, CreateRequest{})
			rt.setFaults(tt.faults)
			_, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "x"})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("checkpoint: %v, want an error with %q", err, tt.wantErr)
			}
			got, err := e.m.Get(ctx, s.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.State != StateFailed || got.Process.PID != 0 || !strings.Contains(got.FailureReason, "did not resume after a checkpoint") {
				t.Errorf("after the hung checkpoint: state %s pid %d reason %q, want failed without a VMM",
					got.State, got.Process.PID, got.FailureReason)
			}
			select {
			case <-rt.machineOf(t, s.Process.PID).Done():
			default:
				t.Error("the hung VMM still runs")
			}
			e.assertNoPartialSnapshot(t, 0)
			e.rec.expect(t, s.ID, "created/starting", "ready/ready", "failed/failed")
			if err := e.m.Remove(ctx, s.ID, false); err != nil {
				t.Fatalf("remove of the failed sandbox: %v", err)
			}
			if dirs := e.sandboxDirs(t); len(dirs) != 0 {
				t.Errorf("left behind: %v", dirs)
			}
		})
	}
}

// Stop and Remove --force preempt a checkpoint stuck in a VMM call: they
// return promptly (not after the call's bound, here minutes), the
// checkpoint fails with Aborted and leaves nothing, and the VMM is killed.
func TestStopAndRemovePreemptHungCheckpointFake(t *testing.T) {
	tests := []struct {
		name   string
		faults fakeFaults
		// hangs is the call the checkpoint is stuck in.
		hangs string
		// remove: Remove --force; else Stop with a short timeout.
		remove bool
	}{
		{"remove --force during snapshot create", fakeFaults{hangSnapshot: true}, "snapshot", true},
		{"remove --force during resume", fakeFaults{hangResume: true}, "resume", true},
		{"stop during snapshot create", fakeFaults{hangSnapshot: true}, "snapshot", false},
		{"stop during resume", fakeFaults{hangResume: true}, "resume", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &fakeRuntime{}
			e := newSnapEnv(t, rt, nil)
			// The production bounds: far longer than the test's context.
			if e.m.calls.snapshot < time.Minute || e.m.calls.resume < 5*time.Second {
				t.Fatalf("call bounds %+v", e.m.calls)
			}
			s := e.ready(t, CreateRequest{})
			hung := make(chan string, 4)
			f := tt.faults
			f.hung = hung
			rt.setFaults(f)
			cpErr := make(chan error, 1)
			go func() {
				_, err := e.m.Checkpoint(t.Context(), CheckpointRequest{SandboxID: s.ID, Name: "x"})
				cpErr <- err
			}()
			if call := <-hung; call != tt.hangs {
				t.Fatalf("hung in %s, want %s", call, tt.hangs)
			}
			// Bounded well below the call's own bound: only a preemption
			// lets the operation through in time.
			ctx := ctxT(t, 4*time.Second)
			if tt.remove {
				if err := e.m.Remove(ctx, s.ID, true); err != nil {
					t.Fatalf("remove --force during the hung checkpoint: %v", err)
				}
				if _, err := e.m.Get(ctx, s.ID); !errors.Is(err, errdefs.ErrNotFound) {
					t.Errorf("get after remove: %v, want NotFound", err)
				}
				if dirs := e.sandboxDirs(t); len(dirs) != 0 {
					t.Errorf("left behind: %v", dirs)
				}
			} else {
				got, err := e.m.Stop(ctx, s.ID, time.Millisecond)
				if err != nil {
					t.Fatalf("stop during the hung checkpoint: %v", err)
				}
				if got.State != StateStopped || got.Process.PID != 0 {
					t.Errorf("after stop: state %s pid %d", got.State, got.Process.PID)
				}
			}
			if err := <-cpErr; !errors.Is(err, errdefs.ErrAborted) {
				t.Errorf("the preempted checkpoint: %v, want Aborted", err)
			}
			select {
			case <-rt.machineOf(t, s.Process.PID).Done():
			default:
				t.Error("the hung VMM still runs")
			}
			e.assertNoPartialSnapshot(t, 0)
			if rt.live() != 0 {
				t.Errorf("%d VMMs still run", rt.live())
			}
		})
	}
}

// A VMM that exits while a checkpoint waits for its resume is recorded by
// its watcher (failed: it exited unexpectedly); the checkpoint's failed
// resume then changes nothing more.
func TestCheckpointResumeOfExitedVMMFake(t *testing.T) {
	rt := &fakeRuntime{}
	e := newSnapEnv(t, rt, nil)
	ctx := ctxT(t, 30*time.Second)
	s := e.ready(t, CreateRequest{})
	hung, release := make(chan string, 4), make(chan struct{})
	rt.setFaults(fakeFaults{hangResume: true, hung: hung, release: release})
	cpErr := make(chan error, 1)
	go func() {
		_, err := e.m.Checkpoint(ctx, CheckpointRequest{SandboxID: s.ID, Name: "x"})
		cpErr <- err
	}()
	if call := <-hung; call != "resume" {
		t.Fatalf("hung in %s", call)
	}
	rt.machineOf(t, s.Process.PID).exit(vmm.ExitStatus{Known: true, Signal: syscall.SIGSEGV})
	e.rec.wait(t, s.ID, ActionExited, 5*time.Second)
	close(release)
	if err := <-cpErr; err == nil || !strings.Contains(err.Error(), "checkpoint: resume") {
		t.Fatalf("checkpoint: %v, want the resume failed", err)
	}
	got, _ := e.m.Get(ctx, s.ID)
	if got.State != StateFailed || !strings.Contains(got.FailureReason, "exited unexpectedly") {
		t.Errorf("state %s reason %q, want failed as the watcher recorded it", got.State, got.FailureReason)
	}
	e.rec.expect(t, s.ID, "created/starting", "ready/ready", "exited/failed")
}

// A TTL that runs out during a hung checkpoint preempts it like Remove
// --force: the sandbox is removed without waiting for the call's bound.
func TestExpiryPreemptsHungCheckpointFake(t *testing.T) {
	rt := &fakeRuntime{}
	e := newSnapEnv(t, rt, nil)
	s := e.ready(t, CreateRequest{})
	hung := make(chan string, 4)
	rt.setFaults(fakeFaults{hangSnapshot: true, hung: hung})
	cpErr := make(chan error, 1)
	go func() {
		_, err := e.m.Checkpoint(t.Context(), CheckpointRequest{SandboxID: s.ID, Name: "x"})
		cpErr <- err
	}()
	<-hung
	expired := make(chan struct{})
	go func() {
		defer close(expired)
		e.m.expire(s.ID) // what the TTL timer calls
	}()
	select {
	case <-expired:
	case <-ctxT(t, 5*time.Second).Done():
		t.Fatal("expiry waited for the hung checkpoint")
	}
	if err := <-cpErr; !errors.Is(err, errdefs.ErrAborted) {
		t.Errorf("the preempted checkpoint: %v, want Aborted", err)
	}
	if _, err := e.m.Get(t.Context(), s.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("get after expiry: %v, want NotFound", err)
	}
	e.assertNoPartialSnapshot(t, 0)
	if dirs := e.sandboxDirs(t); len(dirs) != 0 {
		t.Errorf("left behind: %v", dirs)
	}
}
