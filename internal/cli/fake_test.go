package cli

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs/errgrpc"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// fake is an in-memory daemon: a SandboxService and SandboxSnapshotService
// served by a real grpc.Server on a real unix socket.
type fake struct {
	sock string

	mu        sync.Mutex
	sandboxes map[string]*sandboxv1.Sandbox
	snapshots []*sandboxv1.Snapshot
	nextID    int
	seq       uint64
	subs      map[*subscriber]struct{}
	subAdded  chan struct{} // closed and replaced on every subscription

	// Recorded requests.
	lastCreate *sandboxv1.CreateRequest
	lastList   *sandboxv1.ListRequest
	lastStop   *sandboxv1.StopRequest
	lastRemove *sandboxv1.RemoveRequest
	lastEvents *sandboxv1.EventsRequest
	lastCkpt   *sandboxv1.CheckpointRequest
	lastRestor *sandboxv1.RestoreRequest

	// Behaviour knobs, set before use.
	onCreate      func(f *fake, id string) // runs in a tracked goroutine
	eventsErr     error                    // Events fails with it
	eventsEndAt   int                      // Events returns after this many events (0: never)
	snapshotsImpl bool                     // snapshot service answers instead of UNIMPLEMENTED

	bg   sync.WaitGroup
	stop chan struct{}
}

type subscriber struct {
	req *sandboxv1.EventsRequest
	ch  chan *sandboxv1.Event
}

type fakeSandboxes struct {
	sandboxv1.UnimplementedSandboxServiceServer
	f *fake
}

type fakeSnapshots struct {
	sandboxv1.UnimplementedSandboxSnapshotServiceServer
	f *fake
}

// startFake serves a fake daemon on a fresh socket until the test ends.
// Call configure (may be nil) before serving to set knobs.
func startFake(t *testing.T, configure func(f *fake)) *fake {
	t.Helper()
	f := &fake{
		sock:      filepath.Join(testutil.ShortDir(t), "vmm.sock"),
		sandboxes: map[string]*sandboxv1.Sandbox{},
		subs:      map[*subscriber]struct{}{},
		subAdded:  make(chan struct{}),
		stop:      make(chan struct{}),
	}
	if configure != nil {
		configure(f)
	}
	lis, err := net.Listen("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.WaitForHandlers(true))
	sandboxv1.RegisterSandboxServiceServer(srv, &fakeSandboxes{f: f})
	sandboxv1.RegisterSandboxSnapshotServiceServer(srv, &fakeSnapshots{f: f})
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		close(f.stop)
		f.bg.Wait()
		srv.Stop()
		<-served
	})
	return f
}

// later runs fn in a goroutine the fake owns; it is waited for at cleanup.
func (f *fake) later(fn func()) {
	f.bg.Add(1)
	go func() {
		defer f.bg.Done()
		fn()
	}()
}

// sleep waits d or until the fake stops; it reports whether d elapsed.
func (f *fake) sleep(d time.Duration) bool {
	select {
	case <-time.After(d):
		return true
	case <-f.stop:
		return false
	}
}

// waitSubscriber waits until an Events subscriber for id ("" for any)
// exists; it reports false when the fake stopped first.
func (f *fake) waitSubscriber(id string) bool {
	for {
		f.mu.Lock()
		for s := range f.subs {
			if id == "" || s.req.GetId() == id {
				f.mu.Unlock()
				return true
			}
		}
		ch := f.subAdded
		f.mu.Unlock()
		select {
		case <-ch:
		case <-f.stop:
			return false
		}
	}
}

// add registers a sandbox directly (no event).
func (f *fake) add(sb *sandboxv1.Sandbox) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sandboxes[sb.GetId()] = sb
}

// transition sets a sandbox's state and publishes an event.
func (f *fake) transition(id string, state sandboxv1.SandboxState, action, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	attrs := map[string]string{}
	if sb, ok := f.sandboxes[id]; ok {
		sb.State = state
		if reason != "" {
			sb.FailureReason = reason
			attrs["reason"] = reason
		}
		if state == sandboxv1.SandboxState_SANDBOX_STATE_READY {
			sb.ReadyAt = timestamppb.Now()
		}
	}
	f.publishLocked(&sandboxv1.Event{SandboxId: id, Action: action, State: state, Attributes: attrs})
}

// publish sends an event to every matching subscriber.
func (f *fake) publish(ev *sandboxv1.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.publishLocked(ev)
}

func (f *fake) publishLocked(ev *sandboxv1.Event) {
	f.seq++
	ev.Seq = f.seq
	if ev.Time == nil {
		ev.Time = timestamppb.Now()
	}
	for s := range f.subs {
		if s.req.GetId() != "" && s.req.GetId() != ev.GetSandboxId() {
			continue
		}
		if len(s.req.GetActions()) > 0 && !slices.Contains(s.req.GetActions(), ev.GetAction()) {
			continue
		}
		select {
		case s.ch <- proto.Clone(ev).(*sandboxv1.Event):
		default:
		}
	}
}

func notFound(id string) error {
	return errgrpc.ToGRPC(fmt.Errorf("sandbox %s: %w", id, errdefs.ErrNotFound))
}

func (s *fakeSandboxes) Create(ctx context.Context, req *sandboxv1.CreateRequest) (*sandboxv1.CreateResponse, error) {
	f := s.f
	if req.GetVcpus() > 32 {
		return nil, errgrpc.ToGRPC(fmt.Errorf("vcpus %d is out of range 1..32: %w", req.GetVcpus(), errdefs.ErrInvalidArgument))
	}
	f.mu.Lock()
	f.lastCreate = req
	f.nextID++
	id := fmt.Sprintf("01jd2z9k%04d", f.nextID)
	sb := &sandboxv1.Sandbox{
		Id:     id,
		Labels: req.GetLabels(),
		State:  sandboxv1.SandboxState_SANDBOX_STATE_STARTING,
		Hardware: &sandboxv1.Hardware{
			Vcpus: max(req.GetVcpus(), 1), MemoryMib: max(req.GetMemoryMib(), 512),
			Kernel: req.GetKernel(), Rootfs: req.GetRootfs(), BootArgs: req.GetBootArgs(),
		},
		CreatedAt: timestamppb.Now(),
		Ttl:       req.GetTtl(),
	}
	f.sandboxes[id] = sb
	f.publishLocked(&sandboxv1.Event{SandboxId: id, Action: "created", State: sb.State})
	resp := &sandboxv1.CreateResponse{Sandbox: proto.Clone(sb).(*sandboxv1.Sandbox)}
	f.mu.Unlock()
	if f.onCreate != nil {
		f.later(func() { f.onCreate(f, id) })
	}
	return resp, nil
}

func (s *fakeSandboxes) Inspect(ctx context.Context, req *sandboxv1.InspectRequest) (*sandboxv1.InspectResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	sb, ok := s.f.sandboxes[req.GetId()]
	if !ok {
		return nil, notFound(req.GetId())
	}
	return &sandboxv1.InspectResponse{Sandbox: proto.Clone(sb).(*sandboxv1.Sandbox)}, nil
}

func (s *fakeSandboxes) List(ctx context.Context, req *sandboxv1.ListRequest) (*sandboxv1.ListResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.f.lastList = req
	resp := &sandboxv1.ListResponse{}
	for _, sb := range s.f.sandboxes {
		if len(req.GetStates()) > 0 && !slices.Contains(req.GetStates(), sb.GetState()) {
			continue
		}
		match := true
		for k, v := range req.GetLabels() {
			if sb.GetLabels()[k] != v {
				match = false
			}
		}
		if match {
			resp.Sandboxes = append(resp.Sandboxes, proto.Clone(sb).(*sandboxv1.Sandbox))
		}
	}
	return resp, nil
}

func (s *fakeSandboxes) Stop(ctx context.Context, req *sandboxv1.StopRequest) (*sandboxv1.StopResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.f.lastStop = req
	sb, ok := s.f.sandboxes[req.GetId()]
	if !ok {
		return nil, notFound(req.GetId())
	}
	sb.State = sandboxv1.SandboxState_SANDBOX_STATE_STOPPED
	sb.StoppedAt = timestamppb.Now()
	return &sandboxv1.StopResponse{Sandbox: proto.Clone(sb).(*sandboxv1.Sandbox)}, nil
}

func (s *fakeSandboxes) Remove(ctx context.Context, req *sandboxv1.RemoveRequest) (*sandboxv1.RemoveResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.f.lastRemove = req
	sb, ok := s.f.sandboxes[req.GetId()]
	if !ok {
		return nil, notFound(req.GetId())
	}
	switch sb.GetState() {
	case sandboxv1.SandboxState_SANDBOX_STATE_STOPPED, sandboxv1.SandboxState_SANDBOX_STATE_FAILED:
	default:
		if !req.GetForce() {
			return nil, errgrpc.ToGRPC(fmt.Errorf("sandbox %s is %s: stop it first or use force: %w",
				req.GetId(), stateName(sb.GetState()), errdefs.ErrFailedPrecondition))
		}
	}
	delete(s.f.sandboxes, req.GetId())
	return &sandboxv1.RemoveResponse{}, nil
}

func (s *fakeSandboxes) Events(req *sandboxv1.EventsRequest, stream grpc.ServerStreamingServer[sandboxv1.Event]) error {
	f := s.f
	if f.eventsErr != nil {
		return f.eventsErr
	}
	sub := &subscriber{req: req, ch: make(chan *sandboxv1.Event, 64)}
	f.mu.Lock()
	f.lastEvents = req
	f.subs[sub] = struct{}{}
	close(f.subAdded)
	f.subAdded = make(chan struct{})
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.subs, sub)
		f.mu.Unlock()
	}()
	sent := 0
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case <-f.stop:
			return nil
		case ev := <-sub.ch:
			if err := stream.Send(ev); err != nil {
				return err
			}
			sent++
			if f.eventsEndAt > 0 && sent >= f.eventsEndAt {
				return nil
			}
		}
	}
}

func snapshotsUnimplemented() error {
	return errgrpc.ToGRPC(fmt.Errorf("snapshots are not implemented yet (checkpoint and restore land with the snapshot issue): %w", errdefs.ErrNotImplemented))
}

func (s *fakeSnapshots) Checkpoint(ctx context.Context, req *sandboxv1.CheckpointRequest) (*sandboxv1.CheckpointResponse, error) {
	if !s.f.snapshotsImpl {
		return nil, snapshotsUnimplemented()
	}
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.f.lastCkpt = req
	snap := &sandboxv1.Snapshot{Id: "01jd2zb7q8rs", Name: req.GetName(), SandboxId: req.GetSandboxId(), Type: req.GetType()}
	s.f.snapshots = append(s.f.snapshots, snap)
	return &sandboxv1.CheckpointResponse{Snapshot: snap}, nil
}

func (s *fakeSnapshots) Restore(ctx context.Context, req *sandboxv1.RestoreRequest) (*sandboxv1.RestoreResponse, error) {
	if !s.f.snapshotsImpl {
		return nil, snapshotsUnimplemented()
	}
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.f.lastRestor = req
	return &sandboxv1.RestoreResponse{Sandbox: &sandboxv1.Sandbox{Id: "01jd2zc00001", RestoredFrom: req.GetSnapshotId()}}, nil
}

func (s *fakeSnapshots) ListSnapshots(ctx context.Context, req *sandboxv1.ListSnapshotsRequest) (*sandboxv1.ListSnapshotsResponse, error) {
	if !s.f.snapshotsImpl {
		return nil, snapshotsUnimplemented()
	}
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	resp := &sandboxv1.ListSnapshotsResponse{}
	for _, snap := range s.f.snapshots {
		if req.GetSandboxId() == "" || snap.GetSandboxId() == req.GetSandboxId() {
			resp.Snapshots = append(resp.Snapshots, snap)
		}
	}
	return resp, nil
}

func (s *fakeSnapshots) DeleteSnapshot(ctx context.Context, req *sandboxv1.DeleteSnapshotRequest) (*sandboxv1.DeleteSnapshotResponse, error) {
	if !s.f.snapshotsImpl {
		return nil, snapshotsUnimplemented()
	}
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	for i, snap := range s.f.snapshots {
		if snap.GetId() == req.GetSnapshotId() {
			s.f.snapshots = slices.Delete(s.f.snapshots, i, i+1)
			return &sandboxv1.DeleteSnapshotResponse{}, nil
		}
	}
	return nil, errgrpc.ToGRPC(fmt.Errorf("snapshot %s: %w", req.GetSnapshotId(), errdefs.ErrNotFound))
}

// result is one finished vmm invocation.
type result struct {
	code           int
	stdout, stderr string
}

// runVMM runs the CLI in-process with env (nil: empty).
func runVMM(t *testing.T, ctx context.Context, env map[string]string, args ...string) result {
	t.Helper()
	var stdout, stderr testutil.SyncBuffer
	code := Run(ctx, args, &stdout, &stderr, func(k string) string { return env[k] })
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// vmm runs the CLI against the fake's socket.
func (f *fake) vmm(t *testing.T, args ...string) result {
	t.Helper()
	return runVMM(t, t.Context(), nil, append([]string{"--socket", f.sock}, args...)...)
}

// sandbox builds a fully populated sandbox for output tests.
func fullSandbox(id string, state sandboxv1.SandboxState) *sandboxv1.Sandbox {
	created := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	return &sandboxv1.Sandbox{
		Id:     id,
		Labels: map[string]string{"env": "dev", "owner": "alice"},
		State:  state,
		Hardware: &sandboxv1.Hardware{
			Vcpus: 2, MemoryMib: 1024, Kernel: "/var/lib/firecracker-vmm/kernels/vmlinux",
			Rootfs: "/var/lib/firecracker-vmm/images/root.ext4", BootArgs: "console=ttyS0 reboot=k",
			Disk: "/var/lib/firecracker-vmm/sandboxes/" + id + "/rootfs.ext4",
		},
		Process: &sandboxv1.ProcessInfo{
			Pid: 4242, ApiSocket: "/var/lib/firecracker-vmm/sandboxes/" + id + "/firecracker.sock",
			LogPath: "/x/firecracker.log", MetricsPath: "/x/firecracker.metrics", ConsolePath: "/x/console.log",
		},
		CreatedAt: timestamppb.New(created),
		ReadyAt:   timestamppb.New(created.Add(150 * time.Millisecond)),
		Ttl:       durationpb.New(300 * time.Second),
		ExpiresAt: timestamppb.New(created.Add(300 * time.Second)),
	}
}
