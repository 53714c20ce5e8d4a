package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/events"
	"github.com/firecracker-vmm/firecracker-vmm/internal/sandbox"
	"github.com/firecracker-vmm/firecracker-vmm/internal/snapshot"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeManager implements Manager with replaceable functions and records
// the last request of each kind.
type fakeManager struct {
	mu         sync.Mutex
	createReq  sandbox.CreateRequest
	listFilter sandbox.ListFilter
	stopID     string
	stopTO     time.Duration
	removeID   string
	force      bool

	sb  sandbox.Sandbox
	err error
	// panicMsg makes Get panic.
	panicMsg string
}

func (f *fakeManager) Create(_ context.Context, req sandbox.CreateRequest) (sandbox.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.createReq = req
	return f.sb, f.err
}

func (f *fakeManager) Get(_ context.Context, id string) (sandbox.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.panicMsg != "" {
		panic(f.panicMsg)
	}
	if f.err != nil {
		return sandbox.Sandbox{}, f.err
	}
	sb := f.sb
	sb.ID = id
	return sb, nil
}

func (f *fakeManager) List(_ context.Context, lf sandbox.ListFilter) ([]sandbox.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.listFilter = lf
	if f.err != nil {
		return nil, f.err
	}
	a, b := f.sb, f.sb
	b.ID = "0000000000zz"
	return []sandbox.Sandbox{a, b}, nil
}

func (f *fakeManager) Stop(_ context.Context, id string, timeout time.Duration) (sandbox.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopID, f.stopTO = id, timeout
	return f.sb, f.err
}

func (f *fakeManager) Remove(_ context.Context, id string, force bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removeID, f.force = id, force
	return f.err
}

func (f *fakeManager) set(sb sandbox.Sandbox, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sb, f.err = sb, err
}

// hookedEvents wraps an exchange and signals each successful Subscribe, so
// tests publish only once the server's subscription is in place.
type hookedEvents struct {
	x          *events.Exchange
	subscribed chan struct{}
	panicMsg   string

	mu sync.Mutex
	// subs are the subscriptions made, in order, and sinces the since
	// each was made with.
	subs   []*events.Subscription
	sinces []uint64
	// pages are the lengths of the pages History returned.
	pages []int
}

func (h *hookedEvents) Subscribe(ctx context.Context, f events.Filter, since uint64) (*events.Subscription, error) {
	if h.panicMsg != "" {
		panic(h.panicMsg)
	}
	s, err := h.x.Subscribe(ctx, f, since)
	if err == nil {
		h.mu.Lock()
		h.subs, h.sinces = append(h.subs, s), append(h.sinces, since)
		h.mu.Unlock()
		h.subscribed <- struct{}{}
	}
	return s, err
}

func (h *hookedEvents) History(f events.Filter, since uint64, limit int) ([]events.Event, uint64, error) {
	evs, next, err := h.x.History(f, since, limit)
	h.mu.Lock()
	h.pages = append(h.pages, len(evs))
	h.mu.Unlock()
	return evs, next, err
}

// harness is a real grpc.Server on a real unix socket with a client.
type harness struct {
	mgr    *fakeManager
	ev     *hookedEvents
	logs   *testutil.SyncBuffer
	conn   *grpc.ClientConn
	client sandboxv1.SandboxServiceClient
	snaps  sandboxv1.SandboxSnapshotServiceClient
	// snapMgr answers the snapshot RPCs.
	snapMgr *fakeSnapshots
}

// newHarness starts the server with cfgs applied to its Config, and a
// client with dial options copts.
func newHarness(t *testing.T, opts events.Options, cfgs ...func(*Config)) *harness {
	return newHarnessDial(t, opts, nil, cfgs...)
}

func newHarnessDial(t *testing.T, opts events.Options, copts []grpc.DialOption, cfgs ...func(*Config)) *harness {
	t.Helper()
	h := &harness{
		mgr:  &fakeManager{},
		ev:   &hookedEvents{x: events.NewExchange(opts), subscribed: make(chan struct{}, 16)},
		logs: &testutil.SyncBuffer{},
	}
	log := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.snapMgr = &fakeSnapshots{}
	cfg := Config{Manager: h.mgr, Events: h.ev, Logger: log, Snapshots: h.snapMgr}
	for _, c := range cfgs {
		c(&cfg)
	}
	srv := NewGRPCServer(cfg)
	sock := filepath.Join(testutil.ShortDir(t), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	copts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, copts...)
	conn, err := grpc.NewClient("unix://"+sock, copts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		h.ev.x.Close()
		srv.Stop()
		<-done
	})
	h.conn = conn
	h.client = sandboxv1.NewSandboxServiceClient(conn)
	h.snaps = sandboxv1.NewSandboxSnapshotServiceClient(conn)
	return h
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// fullSandbox has every field set.
func fullSandbox() sandbox.Sandbox {
	base := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	return sandbox.Sandbox{
		ID:     "01h2k3m4n5p6",
		Labels: map[string]string{"env": "dev", "owner": "alice"},
		State:  sandbox.StateReady,
		Hardware: sandbox.Hardware{
			VCPUs: 2, MemoryMiB: 1024,
			Kernel: "/d/kernels/vmlinux", Initrd: "/d/kernels/initrd", Rootfs: "/d/images/root.ext4",
			Disk: "/d/sandboxes/01h2k3m4n5p6/rootfs.ext4", BootArgs: "console=ttyS0",
		},
		Network: sandbox.Network{
			TAP: "fc-01h2k3m4n5p6", MAC: "06:00:ac:14:00:02", IP: "172.20.0.2", Gateway: "172.20.0.1",
			DNS: []string{"1.1.1.1"}, Netns: "/var/run/netns/x", GuestIP: "172.20.0.2",
		},
		Process: sandbox.Process{
			PID: 4242, APISocket: "/d/s/firecracker.sock", LogPath: "/d/s/firecracker.log",
			MetricsPath: "/d/s/firecracker.metrics", ConsolePath: "/d/s/console.log",
			Jailed: true, Chroot: "/srv/jailer/x", UID: 1000, GID: 1001, Cgroup: "firecracker/x",
		},
		Dir:           "/d/sandboxes/01h2k3m4n5p6",
		CreatedAt:     base,
		ReadyAt:       base.Add(time.Second),
		StoppedAt:     base.Add(2 * time.Second),
		TTL:           5 * time.Minute,
		ExpiresAt:     base.Add(5 * time.Minute),
		FailureReason: "boom",
		RestoredFrom:  "snap1",
	}
}

// checkSandbox compares every field of a converted sandbox.
func checkSandbox(t *testing.T, want sandbox.Sandbox, got *sandboxv1.Sandbox) {
	t.Helper()
	var errs []string
	check := func(name string, ok bool, g, w any) {
		if !ok {
			errs = append(errs, fmt.Sprintf("%s = %v, want %v", name, g, w))
		}
	}
	hw, p, n := got.GetHardware(), got.GetProcess(), got.GetNetwork()
	check("id", got.GetId() == want.ID, got.GetId(), want.ID)
	check("labels", maps.Equal(got.GetLabels(), want.Labels), got.GetLabels(), want.Labels)
	check("state", got.GetState() == sandboxv1.SandboxState_SANDBOX_STATE_READY, got.GetState(), "READY")
	check("vcpus", hw.GetVcpus() == uint32(want.Hardware.VCPUs), hw.GetVcpus(), want.Hardware.VCPUs)
	check("memory", hw.GetMemoryMib() == uint32(want.Hardware.MemoryMiB), hw.GetMemoryMib(), want.Hardware.MemoryMiB)
	check("kernel", hw.GetKernel() == want.Hardware.Kernel, hw.GetKernel(), want.Hardware.Kernel)
	check("initrd", hw.GetInitrd() == want.Hardware.Initrd, hw.GetInitrd(), want.Hardware.Initrd)
	check("rootfs", hw.GetRootfs() == want.Hardware.Rootfs, hw.GetRootfs(), want.Hardware.Rootfs)
	check("disk", hw.GetDisk() == want.Hardware.Disk, hw.GetDisk(), want.Hardware.Disk)
	check("boot_args", hw.GetBootArgs() == want.Hardware.BootArgs, hw.GetBootArgs(), want.Hardware.BootArgs)
	check("tap", n.GetTapDevice() == want.Network.TAP, n.GetTapDevice(), want.Network.TAP)
	check("mac", n.GetMacAddress() == want.Network.MAC, n.GetMacAddress(), want.Network.MAC)
	check("ip", n.GetIpAddress() == want.Network.IP, n.GetIpAddress(), want.Network.IP)
	check("gateway", n.GetGateway() == want.Network.Gateway, n.GetGateway(), want.Network.Gateway)
	check("dns", slices.Equal(n.GetDns(), want.Network.DNS), n.GetDns(), want.Network.DNS)
	check("netns", n.GetNetns() == want.Network.Netns, n.GetNetns(), want.Network.Netns)
	check("guest_ip", n.GetGuestIpAddress() == want.Network.GuestIP, n.GetGuestIpAddress(), want.Network.GuestIP)
	check("pid", p.GetPid() == int32(want.Process.PID), p.GetPid(), want.Process.PID)
	check("api_socket", p.GetApiSocket() == want.Process.APISocket, p.GetApiSocket(), want.Process.APISocket)
	check("log_path", p.GetLogPath() == want.Process.LogPath, p.GetLogPath(), want.Process.LogPath)
	check("metrics_path", p.GetMetricsPath() == want.Process.MetricsPath, p.GetMetricsPath(), want.Process.MetricsPath)
	check("console_path", p.GetConsolePath() == want.Process.ConsolePath, p.GetConsolePath(), want.Process.ConsolePath)
	check("jailed", p.GetJailed() == want.Process.Jailed, p.GetJailed(), want.Process.Jailed)
	check("chroot", p.GetChroot() == want.Process.Chroot, p.GetChroot(), want.Process.Chroot)
	check("uid", p.GetUid() == uint32(want.Process.UID), p.GetUid(), want.Process.UID)
	check("gid", p.GetGid() == uint32(want.Process.GID), p.GetGid(), want.Process.GID)
	check("cgroup", p.GetCgroup() == want.Process.Cgroup, p.GetCgroup(), want.Process.Cgroup)
	check("created_at", got.GetCreatedAt().AsTime().Equal(want.CreatedAt), got.GetCreatedAt(), want.CreatedAt)
	check("ready_at", got.GetReadyAt().AsTime().Equal(want.ReadyAt), got.GetReadyAt(), want.ReadyAt)
	check("stopped_at", got.GetStoppedAt().AsTime().Equal(want.StoppedAt), got.GetStoppedAt(), want.StoppedAt)
	check("ttl", got.GetTtl().AsDuration() == want.TTL, got.GetTtl(), want.TTL)
	check("expires_at", got.GetExpiresAt().AsTime().Equal(want.ExpiresAt), got.GetExpiresAt(), want.ExpiresAt)
	check("failure_reason", got.GetFailureReason() == want.FailureReason, got.GetFailureReason(), want.FailureReason)
	check("restored_from", got.GetRestoredFrom() == want.RestoredFrom, got.GetRestoredFrom(), want.RestoredFrom)
	if len(errs) > 0 {
		t.Errorf("sandbox conversion:\n  %s", strings.Join(errs, "\n  "))
	}
}

func TestCreateConvertsEveryField(t *testing.T) {
	h := newHarness(t, events.Options{})
	want := fullSandbox()
	h.mgr.set(want, nil)
	resp, err := h.client.Create(ctxT(t), &sandboxv1.CreateRequest{
		Vcpus: 2, MemoryMib: 1024, Kernel: "/k", Initrd: "/i", Rootfs: "/r", BootArgs: "console=ttyS0",
		Labels: map[string]string{"a": "b"}, Ttl: durationpb.New(90 * time.Second), TrackDirtyPages: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	checkSandbox(t, want, resp.GetSandbox())
	wantReq := sandbox.CreateRequest{
		VCPUs: 2, MemoryMiB: 1024, Kernel: "/k", Initrd: "/i", Rootfs: "/r", BootArgs: "console=ttyS0",
		Labels: map[string]string{"a": "b"}, TTL: 90 * time.Second, TrackDirtyPages: true,
	}
	got := h.mgr.createReq
	if !maps.Equal(got.Labels, wantReq.Labels) {
		t.Errorf("labels = %v, want %v", got.Labels, wantReq.Labels)
	}
	got.Labels, wantReq.Labels = nil, nil
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", wantReq) {
		t.Errorf("manager got %+v\nwant %+v", got, wantReq)
	}
}

func TestZeroValuesStayUnset(t *testing.T) {
	h := newHarness(t, events.Options{})
	h.mgr.set(sandbox.Sandbox{ID: "01h2k3m4n5p6", State: sandbox.StateStarting}, nil)
	resp, err := h.client.Inspect(ctxT(t), &sandboxv1.InspectRequest{Id: "01h2k3m4n5p6"})
	if err != nil {
		t.Fatal(err)
	}
	sb := resp.GetSandbox()
	if sb.GetState() != sandboxv1.SandboxState_SANDBOX_STATE_STARTING {
		t.Errorf("state = %v", sb.GetState())
	}
	for name, set := range map[string]bool{
		"created_at": sb.CreatedAt != nil, "ready_at": sb.ReadyAt != nil, "stopped_at": sb.StoppedAt != nil,
		"ttl": sb.Ttl != nil, "expires_at": sb.ExpiresAt != nil, "network": sb.Network != nil,
	} {
		if set {
			t.Errorf("%s is set for a zero value", name)
		}
	}
	// A create without TTL passes zero.
	if _, err := h.client.Create(ctxT(t), &sandboxv1.CreateRequest{}); err != nil {
		t.Fatal(err)
	}
	if h.mgr.createReq.TTL != 0 {
		t.Errorf("TTL = %v, want 0", h.mgr.createReq.TTL)
	}
}

func TestInspectStopRemoveList(t *testing.T) {
	h := newHarness(t, events.Options{})
	want := fullSandbox()
	h.mgr.set(want, nil)
	ctx := ctxT(t)

	in, err := h.client.Inspect(ctx, &sandboxv1.InspectRequest{Id: want.ID})
	if err != nil {
		t.Fatal(err)
	}
	checkSandbox(t, want, in.GetSandbox())

	st, err := h.client.Stop(ctx, &sandboxv1.StopRequest{Id: want.ID, Timeout: durationpb.New(3 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	checkSandbox(t, want, st.GetSandbox())
	if h.mgr.stopID != want.ID || h.mgr.stopTO != 3*time.Second {
		t.Errorf("Stop got (%q, %v)", h.mgr.stopID, h.mgr.stopTO)
	}
	if _, err := h.client.Stop(ctx, &sandboxv1.StopRequest{Id: want.ID}); err != nil || h.mgr.stopTO != 0 {
		t.Errorf("Stop without timeout: err %v, timeout %v", err, h.mgr.stopTO)
	}

	if _, err := h.client.Remove(ctx, &sandboxv1.RemoveRequest{Id: want.ID, Force: true}); err != nil {
		t.Fatal(err)
	}
	if h.mgr.removeID != want.ID || !h.mgr.force {
		t.Errorf("Remove got (%q, %v)", h.mgr.removeID, h.mgr.force)
	}

	ls, err := h.client.List(ctx, &sandboxv1.ListRequest{
		States: []sandboxv1.SandboxState{
			sandboxv1.SandboxState_SANDBOX_STATE_READY, sandboxv1.SandboxState_SANDBOX_STATE_FAILED,
			sandboxv1.SandboxState_SANDBOX_STATE_READY,
		},
		Labels: map[string]string{"env": "dev"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(ls.GetSandboxes()) != 2 {
		t.Fatalf("List returned %d sandboxes, want 2", len(ls.GetSandboxes()))
	}
	checkSandbox(t, want, ls.GetSandboxes()[0])
	if id := ls.GetSandboxes()[1].GetId(); id != "0000000000zz" {
		t.Errorf("second id = %q", id)
	}
	lf := h.mgr.listFilter
	if !slices.Equal(lf.States, []sandbox.State{sandbox.StateReady, sandbox.StateFailed}) ||
		!maps.Equal(lf.Labels, map[string]string{"env": "dev"}) {
		t.Errorf("List filter = %+v", lf)
	}
}

func TestStateConversionIsComplete(t *testing.T) {
	for _, s := range sandbox.States {
		ps := stateToProto(s)
		if ps == sandboxv1.SandboxState_SANDBOX_STATE_UNSPECIFIED {
			t.Errorf("state %q has no enum value", s)
		}
		back, err := stateFromProto(ps)
		if err != nil || back != s {
			t.Errorf("round trip of %q = %q, %v", s, back, err)
		}
	}
	if len(sandboxv1.SandboxState_name) != len(sandbox.States)+1 {
		t.Errorf("proto has %d states, domain %d (+UNSPECIFIED)", len(sandboxv1.SandboxState_name), len(sandbox.States))
	}
}

func TestErrorCodes(t *testing.T) {
	h := newHarness(t, events.Options{})
	ctx := ctxT(t)
	for _, tc := range []struct {
		class error
		code  codes.Code
	}{
		{errdefs.ErrNotFound, codes.NotFound},
		{errdefs.ErrInvalidArgument, codes.InvalidArgument},
		{errdefs.ErrFailedPrecondition, codes.FailedPrecondition},
		{errdefs.ErrResourceExhausted, codes.ResourceExhausted},
		{errdefs.ErrPermissionDenied, codes.PermissionDenied},
		{errdefs.ErrUnavailable, codes.Unavailable},
		{errors.New("plain"), codes.Unknown},
	} {
		err := fmt.Errorf("sandbox 01h2k3m4n5p6: %w", tc.class)
		h.mgr.set(sandbox.Sandbox{}, err)
		calls := map[string]func() error{
			"Create":  func() error { _, e := h.client.Create(ctx, &sandboxv1.CreateRequest{}); return e },
			"Inspect": func() error { _, e := h.client.Inspect(ctx, &sandboxv1.InspectRequest{Id: "x"}); return e },
			"Stop":    func() error { _, e := h.client.Stop(ctx, &sandboxv1.StopRequest{Id: "x"}); return e },
			"Remove":  func() error { _, e := h.client.Remove(ctx, &sandboxv1.RemoveRequest{Id: "x"}); return e },
			"List":    func() error { _, e := h.client.List(ctx, &sandboxv1.ListRequest{}); return e },
		}
		for name, call := range calls {
			got := call()
			if status.Code(got) != tc.code || status.Convert(got).Message() != err.Error() {
				t.Errorf("%s with %v: got %v, want code %v message %q", name, tc.class, got, tc.code, err.Error())
			}
		}
	}
}

func TestFormatErrors(t *testing.T) {
	h := newHarness(t, events.Options{})
	ctx := ctxT(t)
	_, err := h.client.List(ctx, &sandboxv1.ListRequest{States: []sandboxv1.SandboxState{99}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("List with unknown state: %v", err)
	}
	_, err = h.client.List(ctx, &sandboxv1.ListRequest{States: []sandboxv1.SandboxState{0}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("List with UNSPECIFIED state: %v", err)
	}
	_, err = h.client.Create(ctx, &sandboxv1.CreateRequest{Ttl: &durationpb.Duration{Seconds: 1, Nanos: -5}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "ttl") {
		t.Errorf("Create with malformed ttl: %v", err)
	}
	_, err = h.client.Stop(ctx, &sandboxv1.StopRequest{Id: "x", Timeout: &durationpb.Duration{Nanos: 2e9}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "timeout") {
		t.Errorf("Stop with malformed timeout: %v", err)
	}
}

func TestUnimplemented(t *testing.T) {
	h := newHarness(t, events.Options{})
	ctx := ctxT(t)
	recvErr := func(s interface {
		Recv() (*sandboxv1.ProcessOutput, error)
	}, err error) error {
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}
	checks := map[string]struct {
		call func() error
		want string
	}{
		"Run": {func() error {
			s, err := h.client.Run(ctx, &sandboxv1.RunRequest{Id: "x"})
			return recvErr(s, err)
		}, "in-guest agent"},
		"Exec": {func() error {
			s, err := h.client.Exec(ctx)
			return recvErr(s, err)
		}, "in-guest agent"},
	}
	for name, c := range checks {
		err := c.call()
		if status.Code(err) != codes.Unimplemented || !strings.Contains(status.Convert(err).Message(), c.want) {
			t.Errorf("%s: %v, want Unimplemented mentioning %q", name, err, c.want)
		}
	}
}

// recvAll reads n events from the stream.
func recvN(t *testing.T, s grpc.ServerStreamingClient[sandboxv1.Event], n int) []*sandboxv1.Event {
	t.Helper()
	var out []*sandboxv1.Event
	for range n {
		ev, err := s.Recv()
		if err != nil {
			t.Fatalf("after %d events: %v", len(out), err)
		}
		out = append(out, ev)
	}
	return out
}

func TestEventsFiltering(t *testing.T) {
	h := newHarness(t, events.Options{})
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	const id = "01h2k3m4n5p6"
	stream, err := h.client.Events(ctx, &sandboxv1.EventsRequest{Id: id, Actions: []string{"ready", "stopped"}})
	if err != nil {
		t.Fatal(err)
	}
	<-h.ev.subscribed
	when := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	for _, ev := range []events.Event{
		{SandboxID: id, Action: "created", State: "starting"},
		{SandboxID: "0000000000zz", Action: "ready", State: "ready"},
		{SandboxID: id, Action: "ready", State: "ready", Time: when, Attributes: map[string]string{"k": "v"}},
		{SandboxID: id, Action: "stopping", State: "stopping"},
		{SandboxID: id, Action: "stopped", State: "stopped"},
	} {
		h.ev.x.Publish(ev)
	}
	got := recvN(t, stream, 2)
	first := got[0]
	if first.GetSeq() != 3 || first.GetSandboxId() != id || first.GetAction() != "ready" ||
		first.GetState() != sandboxv1.SandboxState_SANDBOX_STATE_READY || !first.GetTime().AsTime().Equal(when) ||
		!maps.Equal(first.GetAttributes(), map[string]string{"k": "v"}) {
		t.Errorf("first event = %v", first)
	}
	if got[1].GetSeq() != 5 || got[1].GetAction() != "stopped" || got[1].GetState() != sandboxv1.SandboxState_SANDBOX_STATE_STOPPED {
		t.Errorf("second event = %v", got[1])
	}
	cancel()
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("after cancel: %v", err)
	}
}

func TestEventsSinceReplays(t *testing.T) {
	h := newHarness(t, events.Options{History: 4})
	for i := range 6 {
		h.ev.x.Publish(events.Event{SandboxID: "01h2k3m4n5p6", Action: "created", State: "starting", Attributes: map[string]string{"i": fmt.Sprint(i)}})
	}
	ctx := ctxT(t)
	stream, err := h.client.Events(ctx, &sandboxv1.EventsRequest{Since: 4})
	if err != nil {
		t.Fatal(err)
	}
	got := recvN(t, stream, 2)
	if got[0].GetSeq() != 5 || got[1].GetSeq() != 6 {
		t.Errorf("replayed seqs %d, %d; want 5, 6", got[0].GetSeq(), got[1].GetSeq())
	}
	// Seq 2 is gone (history 4 keeps 3..6).
	stream, err = h.client.Events(ctx, &sandboxv1.EventsRequest{Since: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("since beyond history: %v, want FailedPrecondition", err)
	}
}

func TestEventsBadFilter(t *testing.T) {
	h := newHarness(t, events.Options{})
	ctx := ctxT(t)
	for _, req := range []*sandboxv1.EventsRequest{
		{Id: "not-an-id"},
		{Id: "01h2k3m4n5pi"}, // 'i' is not Crockford
		{Id: "01H2K3M4N5P6"}, // upper case
		{Actions: []string{"ready", "exploded"}},
	} {
		stream, err := h.client.Events(ctx, req)
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("Events(%v): %v, want InvalidArgument", req, err)
		}
	}
}

func TestEventsSlowConsumerDisconnected(t *testing.T) {
	h := newHarness(t, events.Options{Buffer: 1})
	ctx := ctxT(t)
	stream, err := h.client.Events(ctx, &sandboxv1.EventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	<-h.ev.subscribed
	// Large events fill the HTTP/2 flow-control window while the client
	// does not read, so the server's buffer of one overflows.
	big := strings.Repeat("x", 32<<10)
	for range 200 {
		h.ev.x.Publish(events.Event{SandboxID: "01h2k3m4n5p6", Action: "created", State: "starting", Attributes: map[string]string{"big": big}})
	}
	n := recvUntilFellBehind(t, stream)
	if n >= 200 {
		t.Errorf("received all %d events; the consumer was never dropped", n)
	}
	if !strings.Contains(h.logs.String(), "fell behind") {
		t.Errorf("slow consumer not logged:\n%s", h.logs)
	}
}

func TestEventsEndOnExchangeClose(t *testing.T) {
	h := newHarness(t, events.Options{})
	ctx := ctxT(t)
	stream, err := h.client.Events(ctx, &sandboxv1.EventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	<-h.ev.subscribed
	h.ev.x.Close()
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "shutting down") {
		t.Errorf("after exchange close: %v, want Unavailable daemon shutting down", err)
	}
	// New subscriptions are refused the same way.
	stream, err = h.client.Events(ctx, &sandboxv1.EventsRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Errorf("subscribe after close: %v", err)
	}
}

func TestHealthAndReflection(t *testing.T) {
	h := newHarness(t, events.Options{})
	ctx := ctxT(t)
	hc := healthpb.NewHealthClient(h.conn)
	for _, svc := range []string{"", "sandbox.v1.SandboxService"} {
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health of %q: %v, %v", svc, resp, err)
		}
	}
	rc, err := reflectionpb.NewServerReflectionClient(h.conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := rc.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := rc.Recv(); err != io.EOF {
		t.Errorf("reflection stream end: %v", err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"sandbox.v1.SandboxService", "sandbox.v1.SandboxSnapshotService", "grpc.health.v1.Health"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v, missing %s", names, want)
		}
	}
}

func TestPanicBecomesInternal(t *testing.T) {
	h := newHarness(t, events.Options{})
	ctx := ctxT(t)
	h.mgr.mu.Lock()
	h.mgr.panicMsg = "kaboom-unary"
	h.mgr.mu.Unlock()
	_, err := h.client.Inspect(ctx, &sandboxv1.InspectRequest{Id: "01h2k3m4n5p6"})
	if status.Code(err) != codes.Internal {
		t.Errorf("unary panic: %v, want Internal", err)
	}
	h.ev.panicMsg = "kaboom-stream"
	stream, err := h.client.Events(ctx, &sandboxv1.EventsRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Internal {
		t.Errorf("stream panic: %v, want Internal", err)
	}
	// The server still works.
	h.mgr.mu.Lock()
	h.mgr.panicMsg = ""
	h.mgr.mu.Unlock()
	if _, err := h.client.Inspect(ctx, &sandboxv1.InspectRequest{Id: "01h2k3m4n5p6"}); err != nil {
		t.Errorf("after panic: %v", err)
	}
	logs := h.logs.String()
	for _, want := range []string{"kaboom-unary", "kaboom-stream", "panic in gRPC handler", "stack="} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

func TestRequestLogging(t *testing.T) {
	h := newHarness(t, events.Options{})
	h.mgr.set(sandbox.Sandbox{}, fmt.Errorf("sandbox x: %w", errdefs.ErrNotFound))
	_, _ = h.client.Inspect(ctxT(t), &sandboxv1.InspectRequest{Id: "x"})
	logs := h.logs.String()
	for _, want := range []string{"grpc request", "method=/sandbox.v1.SandboxService/Inspect", "code=NotFound", "duration=", "level=WARN"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

// fakeSnapshots is a SnapshotManager that records its calls.
type fakeSnapshots struct {
	mu       sync.Mutex
	lastCkpt sandbox.CheckpointRequest
	lastRest sandbox.RestoreRequest
}

func (f *fakeSnapshots) Checkpoint(_ context.Context, req sandbox.CheckpointRequest) (snapshot.Meta, error) {
	f.mu.Lock()
	f.lastCkpt = req
	f.mu.Unlock()
	if req.SandboxID == "0000000000zz" {
		return snapshot.Meta{}, fmt.Errorf("sandbox %s: %w", req.SandboxID, errdefs.ErrNotFound)
	}
	if req.Name == "dup" {
		return snapshot.Meta{}, fmt.Errorf("snapshot name %q: %w", req.Name, errdefs.ErrAlreadyExists)
	}
	typ := snapshot.TypeFull
	if req.Diff {
		typ = snapshot.TypeDiff
	}
	return snapshot.Meta{
		ID: "1m8hsnapshot", Name: req.Name, SandboxID: req.SandboxID, Type: typ, ParentID: "base",
		FirecrackerVersion: "1.16.1", SnapshotVersion: "10.0.0", PauseDuration: 12 * time.Millisecond,
		Hardware: snapshot.Hardware{VCPUs: 2, MemoryMiB: 1024},
		Network:  &snapshot.Network{GuestIP: "172.16.0.2", GuestMAC: "06:00:0a:00:00:02", TAP: "tap0"},
		Files:    map[string]snapshot.FileInfo{"mem": {Size: 100}, "vmstate": {Size: 20}},
		Dir:      "/data/snapshots/x/y",
	}, nil
}

func (f *fakeSnapshots) Restore(_ context.Context, req sandbox.RestoreRequest) (sandbox.Sandbox, error) {
	f.mu.Lock()
	f.lastRest = req
	f.mu.Unlock()
	if req.SnapshotID == "0000000000zz" {
		return sandbox.Sandbox{}, fmt.Errorf("snapshot %s: %w", req.SnapshotID, errdefs.ErrNotFound)
	}
	return sandbox.Sandbox{ID: "1m8hrestored", State: sandbox.StateStarting, RestoredFrom: req.SnapshotID, TTL: req.TTL}, nil
}

func (f *fakeSnapshots) ListSnapshots(_ context.Context, sandboxID string) ([]snapshot.Meta, error) {
	return []snapshot.Meta{{ID: "a", SandboxID: sandboxID}, {ID: "b", SandboxID: sandboxID}}, nil
}

func (f *fakeSnapshots) DeleteSnapshot(_ context.Context, id string) error {
	if id == "busy" {
		return fmt.Errorf("snapshot %s is being restored: %w", id, errdefs.ErrFailedPrecondition)
	}
	return nil
}

func TestSnapshotService(t *testing.T) {
	h := newHarness(t, events.Options{})
	ctx := ctxT(t)
	r, err := h.snaps.Checkpoint(ctx, &sandboxv1.CheckpointRequest{SandboxId: "1m8hsandbox1", Name: "cp", Type: sandboxv1.SnapshotType_SNAPSHOT_TYPE_DIFF})
	if err != nil {
		t.Fatal(err)
	}
	s := r.GetSnapshot()
	if s.GetId() != "1m8hsnapshot" || s.GetType() != sandboxv1.SnapshotType_SNAPSHOT_TYPE_DIFF || s.GetSizeBytes() != 120 ||
		s.GetPauseDuration().AsDuration() != 12*time.Millisecond || s.GetNetwork().GetMacAddress() == "" ||
		s.GetHardware().GetMemoryMib() != 1024 || s.GetParentId() != "base" || s.GetSnapshotVersion() != "10.0.0" {
		t.Fatalf("checkpoint response = %v", s)
	}
	if !h.snapMgr.lastCkpt.Diff {
		t.Fatal("Diff not passed to the manager")
	}
	tests := []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"checkpoint unknown sandbox", func() error {
			_, err := h.snaps.Checkpoint(ctx, &sandboxv1.CheckpointRequest{SandboxId: "0000000000zz", Name: "x"})
			return err
		}, codes.NotFound},
		{"checkpoint duplicate name", func() error {
			_, err := h.snaps.Checkpoint(ctx, &sandboxv1.CheckpointRequest{SandboxId: "1m8hsandbox1", Name: "dup"})
			return err
		}, codes.AlreadyExists},
		{"checkpoint unknown type", func() error {
			_, err := h.snaps.Checkpoint(ctx, &sandboxv1.CheckpointRequest{SandboxId: "1m8hsandbox1", Name: "x", Type: 7})
			return err
		}, codes.InvalidArgument},
		{"restore unknown snapshot", func() error {
			_, err := h.snaps.Restore(ctx, &sandboxv1.RestoreRequest{SnapshotId: "0000000000zz"})
			return err
		}, codes.NotFound},
		{"delete while restoring", func() error {
			_, err := h.snaps.DeleteSnapshot(ctx, &sandboxv1.DeleteSnapshotRequest{SnapshotId: "busy"})
			return err
		}, codes.FailedPrecondition},
	}
	for _, tt := range tests {
		if err := tt.call(); status.Code(err) != tt.code {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.code)
		}
	}
	rr, err := h.snaps.Restore(ctx, &sandboxv1.RestoreRequest{SnapshotId: "1m8hsnapshot", Labels: map[string]string{"k": "v"}, Ttl: durationpb.New(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if rr.GetSandbox().GetRestoredFrom() != "1m8hsnapshot" || h.snapMgr.lastRest.TTL != time.Minute || h.snapMgr.lastRest.Labels["k"] != "v" {
		t.Fatalf("restore = %v, manager saw %+v", rr.GetSandbox(), h.snapMgr.lastRest)
	}
	l, err := h.snaps.ListSnapshots(ctx, &sandboxv1.ListSnapshotsRequest{SandboxId: "1m8hsandbox1"})
	if err != nil || len(l.GetSnapshots()) != 2 || l.GetSnapshots()[0].GetSandboxId() != "1m8hsandbox1" {
		t.Fatalf("list = %v, %v", l, err)
	}
	if _, err := h.snaps.DeleteSnapshot(ctx, &sandboxv1.DeleteSnapshotRequest{SnapshotId: "a"}); err != nil {
		t.Fatal(err)
	}
}

func TestSnapshotServiceWithoutManager(t *testing.T) {
	_, err := NewSnapshotService(nil).ListSnapshots(t.Context(), &sandboxv1.ListSnapshotsRequest{})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("without a manager: %v, want FailedPrecondition", err)
	}
}
