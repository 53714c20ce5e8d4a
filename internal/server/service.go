package server

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"google.golang.org/grpc"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs/errgrpc"
	"github.com/firecracker-vmm/firecracker-vmm/internal/events"
	"github.com/firecracker-vmm/firecracker-vmm/internal/sandbox"
	"github.com/firecracker-vmm/firecracker-vmm/internal/snapshot"
)

// Manager is what the server needs of the sandbox manager
// (*sandbox.Manager implements it).
type Manager interface {
	Create(ctx context.Context, req sandbox.CreateRequest) (sandbox.Sandbox, error)
	Get(ctx context.Context, id string) (sandbox.Sandbox, error)
	List(ctx context.Context, f sandbox.ListFilter) ([]sandbox.Sandbox, error)
	Stop(ctx context.Context, id string, timeout time.Duration) (sandbox.Sandbox, error)
	Remove(ctx context.Context, id string, force bool) error
}

// EventSource is what the server needs of the event exchange
// (*events.Exchange implements it).
type EventSource interface {
	Subscribe(ctx context.Context, f events.Filter, since uint64) (*events.Subscription, error)
	History(f events.Filter, since uint64, limit int) (evs []events.Event, next uint64, err error)
}

var (
	_ Manager     = (*sandbox.Manager)(nil)
	_ EventSource = (*events.Exchange)(nil)
)

// knownActions are the event actions a client may filter on.
var knownActions = []string{
	sandbox.ActionCreated, sandbox.ActionReady, sandbox.ActionFailed, sandbox.ActionStopping,
	sandbox.ActionStopped, sandbox.ActionExited, sandbox.ActionRemoved, sandbox.ActionExpired,
	sandbox.ActionCheckpointed, sandbox.ActionRestored,
}

// Service implements sandbox.v1.SandboxService on top of a Manager and an
// EventSource.
type Service struct {
	sandboxv1.UnimplementedSandboxServiceServer

	manager Manager
	events  EventSource
	log     *slog.Logger
	// subscribers caps the Events streams (shared by the daemon's servers).
	subscribers *SubscriberLimit
	// sendTimeout bounds how long one event waits for a client that does
	// not read.
	sendTimeout time.Duration
}

var _ sandboxv1.SandboxServiceServer = (*Service)(nil)

// NewService returns a Service. log may be nil (slog.Default()).
func NewService(m Manager, ev EventSource, log *slog.Logger) *Service {
	if log == nil {
		log = slog.Default()
	}
	return &Service{manager: m, events: ev, log: log,
		subscribers: NewSubscriberLimit(DefaultMaxEventSubscribers), sendTimeout: DefaultEventSendTimeout}
}

// Create converts the request and asks the manager for a new sandbox.
func (s *Service) Create(ctx context.Context, req *sandboxv1.CreateRequest) (*sandboxv1.CreateResponse, error) {
	ttl, err := durationFromProto("ttl", req.GetTtl())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	sb, err := s.manager.Create(ctx, sandbox.CreateRequest{
		VCPUs:           int(req.GetVcpus()),
		MemoryMiB:       int(req.GetMemoryMib()),
		Kernel:          req.GetKernel(),
		Initrd:          req.GetInitrd(),
		Rootfs:          req.GetRootfs(),
		BootArgs:        req.GetBootArgs(),
		Labels:          req.GetLabels(),
		TTL:             ttl,
		TrackDirtyPages: req.GetTrackDirtyPages(),
	})
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &sandboxv1.CreateResponse{Sandbox: sandboxToProto(sb)}, nil
}

// Run answers UNIMPLEMENTED: it needs the guest agent.
func (s *Service) Run(*sandboxv1.RunRequest, grpc.ServerStreamingServer[sandboxv1.ProcessOutput]) error {
	return errgrpc.ToGRPC(fmt.Errorf("Run needs the in-guest agent (vsock), which is not implemented yet: %w",
		errdefs.ErrNotImplemented))
}

// Exec answers UNIMPLEMENTED: it needs the guest agent.
func (s *Service) Exec(grpc.BidiStreamingServer[sandboxv1.ExecRequest, sandboxv1.ProcessOutput]) error {
	return errgrpc.ToGRPC(fmt.Errorf("Exec needs the in-guest agent (vsock), which is not implemented yet: %w",
		errdefs.ErrNotImplemented))
}

// Stop stops a sandbox and returns it.
func (s *Service) Stop(ctx context.Context, req *sandboxv1.StopRequest) (*sandboxv1.StopResponse, error) {
	timeout, err := durationFromProto("timeout", req.GetTimeout())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	sb, err := s.manager.Stop(ctx, req.GetId(), timeout)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &sandboxv1.StopResponse{Sandbox: sandboxToProto(sb)}, nil
}

// Remove deletes a sandbox.
func (s *Service) Remove(ctx context.Context, req *sandboxv1.RemoveRequest) (*sandboxv1.RemoveResponse, error) {
	if err := s.manager.Remove(ctx, req.GetId(), req.GetForce()); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &sandboxv1.RemoveResponse{}, nil
}

// Inspect returns one sandbox.
func (s *Service) Inspect(ctx context.Context, req *sandboxv1.InspectRequest) (*sandboxv1.InspectResponse, error) {
	sb, err := s.manager.Get(ctx, req.GetId())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &sandboxv1.InspectResponse{Sandbox: sandboxToProto(sb)}, nil
}

// List returns the sandboxes that match the filters.
func (s *Service) List(ctx context.Context, req *sandboxv1.ListRequest) (*sandboxv1.ListResponse, error) {
	f := sandbox.ListFilter{Labels: req.GetLabels()}
	for _, st := range req.GetStates() {
		ds, err := stateFromProto(st)
		if err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
		if !slices.Contains(f.States, ds) {
			f.States = append(f.States, ds)
		}
	}
	list, err := s.manager.List(ctx, f)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	resp := &sandboxv1.ListResponse{Sandboxes: make([]*sandboxv1.Sandbox, 0, len(list))}
	for _, sb := range list {
		resp.Sandboxes = append(resp.Sandboxes, sandboxToProto(sb))
	}
	return resp, nil
}

// SnapshotManager is what the snapshot service needs of the sandbox
// manager (*sandbox.Manager implements it).
type SnapshotManager interface {
	Checkpoint(ctx context.Context, req sandbox.CheckpointRequest) (snapshot.Meta, error)
	Restore(ctx context.Context, req sandbox.RestoreRequest) (sandbox.Sandbox, error)
	ListSnapshots(ctx context.Context, sandboxID string) ([]snapshot.Meta, error)
	DeleteSnapshot(ctx context.Context, id string) error
}

var _ SnapshotManager = (*sandbox.Manager)(nil)

// SnapshotService implements sandbox.v1.SandboxSnapshotService on top of a
// SnapshotManager. Without one every RPC answers FAILED_PRECONDITION.
type SnapshotService struct {
	sandboxv1.UnimplementedSandboxSnapshotServiceServer

	manager SnapshotManager
}

var _ sandboxv1.SandboxSnapshotServiceServer = (*SnapshotService)(nil)

// NewSnapshotService returns a SnapshotService; m may be nil.
func NewSnapshotService(m SnapshotManager) *SnapshotService { return &SnapshotService{manager: m} }

func (s *SnapshotService) check() error {
	if s.manager == nil {
		return errgrpc.ToGRPC(fmt.Errorf("snapshots are not available on this daemon: %w", errdefs.ErrFailedPrecondition))
	}
	return nil
}

// Checkpoint snapshots a running sandbox.
func (s *SnapshotService) Checkpoint(ctx context.Context, req *sandboxv1.CheckpointRequest) (*sandboxv1.CheckpointResponse, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	var diff bool
	switch req.GetType() {
	case sandboxv1.SnapshotType_SNAPSHOT_TYPE_UNSPECIFIED, sandboxv1.SnapshotType_SNAPSHOT_TYPE_FULL:
	case sandboxv1.SnapshotType_SNAPSHOT_TYPE_DIFF:
		diff = true
	default:
		return nil, errgrpc.ToGRPC(fmt.Errorf("snapshot type %d: unknown: %w", req.GetType(), errdefs.ErrInvalidArgument))
	}
	m, err := s.manager.Checkpoint(ctx, sandbox.CheckpointRequest{SandboxID: req.GetSandboxId(), Name: req.GetName(), Diff: diff})
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &sandboxv1.CheckpointResponse{Snapshot: snapshotToProto(m)}, nil
}

// Restore creates a new sandbox from a snapshot.
func (s *SnapshotService) Restore(ctx context.Context, req *sandboxv1.RestoreRequest) (*sandboxv1.RestoreResponse, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	ttl, err := durationFromProto("ttl", req.GetTtl())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	sb, err := s.manager.Restore(ctx, sandbox.RestoreRequest{SnapshotID: req.GetSnapshotId(), Labels: req.GetLabels(), TTL: ttl})
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &sandboxv1.RestoreResponse{Sandbox: sandboxToProto(sb)}, nil
}

// ListSnapshots lists snapshots, all or of one sandbox.
func (s *SnapshotService) ListSnapshots(ctx context.Context, req *sandboxv1.ListSnapshotsRequest) (*sandboxv1.ListSnapshotsResponse, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	metas, err := s.manager.ListSnapshots(ctx, req.GetSandboxId())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	out := make([]*sandboxv1.Snapshot, 0, len(metas))
	for _, m := range metas {
		out = append(out, snapshotToProto(m))
	}
	return &sandboxv1.ListSnapshotsResponse{Snapshots: out}, nil
}

// DeleteSnapshot removes a snapshot.
func (s *SnapshotService) DeleteSnapshot(ctx context.Context, req *sandboxv1.DeleteSnapshotRequest) (*sandboxv1.DeleteSnapshotResponse, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if err := s.manager.DeleteSnapshot(ctx, req.GetSnapshotId()); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &sandboxv1.DeleteSnapshotResponse{}, nil
}
