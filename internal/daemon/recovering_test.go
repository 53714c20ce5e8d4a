package daemon

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/sandbox"
)

// recoveringManager is a fakeManager whose Recover waits until release is
// closed (or its context ends), telling the test when it has begun.
type recoveringManager struct {
	fakeManager
	started chan struct{}
	release chan struct{}
}

func (m *recoveringManager) Recover(ctx context.Context) error {
	close(m.started)
	select {
	case <-m.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestRunAnswersUnavailableWhileRecovering: while Recover runs the daemon
// already serves, answering every sandbox call UNAVAILABLE ("recovering")
// and health NOT_SERVING; once Recover returns, the same connection is
// served normally.
func TestRunAnswersUnavailableWhileRecovering(t *testing.T) {
	cfg := testConfig(t, fakeFirecracker(t))
	log, logs := testLogger()
	d := New(cfg, log)
	mgr := &recoveringManager{started: make(chan struct{}), release: make(chan struct{})}
	d.newManager = func(c sandbox.Config) (manager, error) { mgr.cfg = c; return mgr, nil }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-mgr.started:
	case err := <-done:
		t.Fatalf("daemon did not start: %v\n%s", err, logs)
	case <-time.After(10 * time.Second):
		t.Fatalf("Recover not called after 10s\n%s", logs)
	}

	conn := dialUnix(t, filepath.Clean(cfg.GRPC.UnixSocket))
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	_, err := sandboxv1.NewSandboxServiceClient(conn).List(cctx, &sandboxv1.ListRequest{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "recovering") {
		t.Fatalf("List while recovering: %v, want UNAVAILABLE saying it is recovering", err)
	}
	resp, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health while recovering: %v, %v; want NOT_SERVING", resp.GetStatus(), err)
	}
	select {
	case <-d.Ready():
		t.Fatal("Ready closed before recovery finished")
	default:
	}

	close(mgr.release)
	select {
	case <-d.Ready():
	case <-time.After(10 * time.Second):
		t.Fatalf("not ready 10s after recovery finished\n%s", logs)
	}
	if _, err := sandboxv1.NewSandboxServiceClient(conn).List(cctx, &sandboxv1.ListRequest{}); err != nil {
		t.Fatalf("List after recovery: %v", err)
	}
	if err := healthCheck(cctx, conn); err != nil {
		t.Fatalf("health after recovery: %v", err)
	}
	if !strings.Contains(logs.String(), "recovery finished") {
		t.Errorf("the log does not say how long recovery took:\n%s", logs)
	}
}
