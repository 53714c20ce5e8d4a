package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/firecracker"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// createAndWait creates a sandbox (with ttl when non-zero) and waits until
// it is ready.
func createAndWait(t *testing.T, d *daemon, ttl time.Duration) *sandboxv1.Sandbox {
	t.Helper()
	req := &sandboxv1.CreateRequest{Labels: map[string]string{"test": "restart"}}
	if ttl > 0 {
		req.Ttl = durationpb.New(ttl)
	}
	r, err := d.sb.Create(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	return d.waitState(r.GetSandbox().GetId(), sandboxv1.SandboxState_SANDBOX_STATE_READY, 10*time.Second)
}

// setOnShutdown rewrites the daemon's [daemon] on_shutdown.
func setOnShutdown(t *testing.T, d *daemon, from, to string) {
	t.Helper()
	conf, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	body := strings.Replace(string(conf), "on_shutdown = \""+from+"\"", "on_shutdown = \""+to+"\"", 1)
	if body == string(conf) {
		t.Fatalf("config has no on_shutdown = %q:\n%s", from, conf)
	}
	writeFile(t, d.config, body, 0)
}

// TestRestartKeepsSandboxes restarts a daemon in "leave" mode with twenty
// sandboxes in mixed states (ready, stopped, failed, with TTLs): the running ones are re-adopted with the same
// VMM, stopped ones stay stopped, a VMM killed while the daemon was down
// turns into a stopped sandbox with an event, and a TTL that ran out while
// the daemon was down removes its sandbox at start. Switching to "stop"
// mode then stops and removes everything at the next shutdown.
func TestRestartKeepsSandboxes(t *testing.T) {
	d := startDaemon(t, options{onShutdown: "leave"})
	emu := testutil.Emulator(t)
	t.Cleanup(func() {
		// A test that failed half-way must not leave "leave" VMMs behind.
		if t.Failed() {
			for _, pid := range testutil.ProcessesOf(emu) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	var ready, stopped, failed []*sandboxv1.Sandbox
	for range 12 {
		ready = append(ready, createAndWait(t, d, 0))
	}
	longTTL := createAndWait(t, d, time.Hour)
	ready = append(ready, longTTL)
	for range 3 {
		sb := createAndWait(t, d, 0)
		if _, err := d.sb.Stop(t.Context(), &sandboxv1.StopRequest{Id: sb.GetId()}); err != nil {
			t.Fatal(err)
		}
		stopped = append(stopped, d.waitState(sb.GetId(), sandboxv1.SandboxState_SANDBOX_STATE_STOPPED, 10*time.Second))
	}
	for range 2 {
		// A VMM that dies under a running daemon: the sandbox fails.
		sb := createAndWait(t, d, 0)
		if err := syscall.Kill(int(sb.GetProcess().GetPid()), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		failed = append(failed, d.waitState(sb.GetId(), sandboxv1.SandboxState_SANDBOX_STATE_FAILED, 10*time.Second))
	}
	victim := createAndWait(t, d, 0)
	shortTTL := createAndWait(t, d, 2*time.Second)

	d.stop()
	if n := len(testutil.ProcessesOf(emu)); n != len(ready)+2 {
		t.Fatalf("%d VMMs running after a 'leave' shutdown, want %d", n, len(ready)+2)
	}
	if err := syscall.Kill(int(victim.GetProcess().GetPid()), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(shortTTL.GetCreatedAt().AsTime().Add(2*time.Second + 100*time.Millisecond)))

	d.start()
	for _, want := range ready {
		got := d.waitState(want.GetId(), sandboxv1.SandboxState_SANDBOX_STATE_READY, time.Second)
		if got.GetProcess().GetPid() != want.GetProcess().GetPid() {
			t.Errorf("sandbox %s: pid %d after restart, want %d", want.GetId(), got.GetProcess().GetPid(), want.GetProcess().GetPid())
		}
		if got.GetLabels()["test"] != "restart" {
			t.Errorf("sandbox %s: labels %v after restart", want.GetId(), got.GetLabels())
		}
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		c := firecracker.NewClient(got.GetProcess().GetApiSocket())
		info, err := c.DescribeInstance(ctx)
		c.Close()
		cancel()
		if err != nil || info.ID != want.GetId() {
			t.Errorf("sandbox %s: GET / on its API socket after restart: %+v, %v", want.GetId(), info, err)
		}
	}
	got := d.waitState(longTTL.GetId(), sandboxv1.SandboxState_SANDBOX_STATE_READY, time.Second)
	if !got.GetExpiresAt().AsTime().Equal(longTTL.GetExpiresAt().AsTime()) {
		t.Errorf("TTL deadline %v after restart, want %v", got.GetExpiresAt().AsTime(), longTTL.GetExpiresAt().AsTime())
	}
	for _, want := range stopped {
		d.waitState(want.GetId(), sandboxv1.SandboxState_SANDBOX_STATE_STOPPED, time.Second)
	}
	for _, want := range failed {
		got := d.waitState(want.GetId(), sandboxv1.SandboxState_SANDBOX_STATE_FAILED, time.Second)
		if got.GetFailureReason() != want.GetFailureReason() || got.GetFailureReason() == "" {
			t.Errorf("failed sandbox %s: reason %q after restart, want %q", want.GetId(), got.GetFailureReason(), want.GetFailureReason())
		}
	}
	list, err := d.sb.List(t.Context(), &sandboxv1.ListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// Twenty before the restart, less the one whose TTL ran out.
	if n := len(list.GetSandboxes()); n != 19 {
		t.Errorf("%d sandboxes after restart, want 19", n)
	}
	dead := d.waitState(victim.GetId(), sandboxv1.SandboxState_SANDBOX_STATE_STOPPED, time.Second)
	if !strings.Contains(dead.GetFailureReason(), "daemon was down") {
		t.Errorf("killed VMM: failure reason %q", dead.GetFailureReason())
	}
	if _, err := d.sb.Inspect(t.Context(), &sandboxv1.InspectRequest{Id: shortTTL.GetId()}); status.Code(err) != codes.NotFound {
		t.Errorf("sandbox whose TTL ran out while the daemon was down: inspect = %v, want NotFound", err)
	}
	if _, err := os.Stat(filepath.Join(d.data, "sandboxes", shortTTL.GetId())); !os.IsNotExist(err) {
		t.Errorf("expired sandbox's directory: %v", err)
	}

	// The event history survives the restart: replaying from seq 1 finds
	// the second sandbox's creation, and the exit found at start.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	stream, err := d.sb.Events(ctx, &sandboxv1.EventsRequest{Since: 1})
	if err != nil {
		t.Fatal(err)
	}
	var sawCreated, sawExited bool
	for !sawCreated || !sawExited {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("events since 1 (created %v, exited %v): %v", sawCreated, sawExited, err)
		}
		switch {
		case ev.GetSandboxId() == ready[1].GetId() && ev.GetAction() == "created":
			sawCreated = true
		case ev.GetSandboxId() == victim.GetId() && ev.GetAction() == "exited":
			sawExited = true
		}
	}
	cancel()

	// "stop" mode stops and removes every sandbox, adopted ones included.
	d.stop()
	setOnShutdown(t, d, "leave", "stop")
	d.start()
	d.stop()
	if pids := testutil.ProcessesOf(emu); len(pids) != 0 {
		t.Fatalf("VMMs left after a 'stop' shutdown: %v", pids)
	}
	if dirs := d.sandboxDirs(); len(dirs) != 0 {
		t.Fatalf("sandbox dirs left after a 'stop' shutdown: %v", dirs)
	}
}

// TestCorruptStoreRefusesStart: a state.db that is not a database stops
// start-up with a message naming it, and the file is left as it was.
func TestCorruptStoreRefusesStart(t *testing.T) {
	d := startDaemon(t, options{})
	d.stop()
	db := filepath.Join(d.data, "state.db")
	garbage := bytes.Repeat([]byte("not a bbolt file\n"), 1024)
	if err := os.WriteFile(db, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(testutil.Binary(t, "vmm-daemon"), "--config", d.config).CombinedOutput()
	if err == nil || !strings.Contains(string(out), db) {
		t.Fatalf("daemon on a corrupt store: %v\n%s", err, out)
	}
	after, err := os.ReadFile(db)
	if err != nil || !bytes.Equal(after, garbage) {
		t.Fatalf("the corrupt store was changed (%v)", err)
	}
	if _, err := os.Stat(d.sock); !os.IsNotExist(err) {
		t.Fatalf("the refused daemon left its socket: %v", err)
	}
}
