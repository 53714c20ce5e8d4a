package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// sandboxJSON is the part of the CLI's JSON view the tests read.
type sandboxJSON struct {
	ID            string            `json:"id"`
	State         string            `json:"state"`
	Labels        map[string]string `json:"labels"`
	VCPUs         int               `json:"vcpus"`
	MemoryMiB     int               `json:"memory_mib"`
	Kernel        string            `json:"kernel"`
	Rootfs        string            `json:"rootfs"`
	Disk          string            `json:"disk"`
	FailureReason string            `json:"failure_reason"`
	Process       struct {
		PID         int    `json:"pid"`
		APISocket   string `json:"api_socket"`
		ConsolePath string `json:"console_path"`
	} `json:"process"`
}

// TestQuickStartThroughCLI walks the seed's quick start with the real CLI:
// create, list, inspect, events, stop, remove.
func TestQuickStartThroughCLI(t *testing.T) {
	d := startDaemon(t, options{})

	// Stream events through the CLI from the start.
	ev := exec.Command(testutil.Binary(t, "vmm"), "events")
	ev.Env = append(os.Environ(), "VMM_SOCKET="+d.sock)
	evOut, err := ev.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := ev.Start(); err != nil {
		t.Fatal(err)
	}
	var lines []string
	var mu sync.Mutex
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(evOut)
		for sc.Scan() {
			mu.Lock()
			lines = append(lines, sc.Text())
			mu.Unlock()
		}
	}()
	time.Sleep(200 * time.Millisecond) // let the stream subscribe

	id := strings.TrimSpace(d.mustVMM("create", "--vcpus", "2", "--memory", "1024", "--label", "env=dev", "--label", "owner=alice", "--wait"))
	if len(id) != 12 || strings.ContainsAny(id, " \n") {
		t.Fatalf("create printed %q, want only the id", id)
	}

	var list []sandboxJSON
	if err := json.Unmarshal([]byte(d.mustVMM("list", "-o", "json")), &list); err != nil {
		t.Fatalf("list -o json: %v", err)
	}
	if len(list) != 1 || list[0].ID != id || list[0].State != "ready" || list[0].Labels["owner"] != "alice" {
		t.Fatalf("list = %+v", list)
	}
	if out := d.mustVMM("list", "--state", "stopped", "-o", "json"); strings.Contains(out, id) {
		t.Fatalf("--state stopped lists a ready sandbox: %s", out)
	}
	if out := d.mustVMM("list", "--state", "ready"); !strings.Contains(out, id) {
		t.Fatalf("table list lacks %s:\n%s", id, out)
	}

	var one sandboxJSON
	if err := json.Unmarshal([]byte(d.mustVMM("inspect", id, "-o", "json")), &one); err != nil {
		t.Fatalf("inspect -o json: %v", err)
	}
	if one.VCPUs != 2 || one.MemoryMiB != 1024 || one.Process.PID == 0 || one.Disk == "" || one.Disk == one.Rootfs {
		t.Fatalf("inspect = %+v", one)
	}
	if _, err := os.Stat(one.Process.APISocket); err != nil {
		t.Fatalf("API socket: %v", err)
	}
	console, err := os.ReadFile(one.Process.ConsolePath)
	if err != nil || len(console) == 0 {
		t.Fatalf("console file %s: %v (%d bytes)", one.Process.ConsolePath, err, len(console))
	}
	if out := d.mustVMM("inspect", id); !strings.Contains(out, id) {
		t.Fatalf("inspect table lacks the id:\n%s", out)
	}

	d.mustVMM("stop", id)
	d.waitState(id, sandboxv1.SandboxState_SANDBOX_STATE_STOPPED, 5*time.Second)
	if testutil.ProcessesOf(testutil.Emulator(t)) != nil {
		t.Fatal("emulator still running after stop")
	}
	d.mustVMM("remove", id)
	if _, err := d.sb.Inspect(t.Context(), &sandboxv1.InspectRequest{Id: id}); status.Code(err) != codes.NotFound {
		t.Fatalf("inspect after remove: %v, want NotFound", err)
	}
	if dirs := d.sandboxDirs(); len(dirs) != 0 {
		t.Fatalf("sandbox dirs left after remove: %v", dirs)
	}

	deadline := time.Now().Add(3 * time.Second)
	want := []string{"created", "ready", "stopping", "stopped", "removed"}
	for {
		mu.Lock()
		text := strings.Join(lines, "\n")
		mu.Unlock()
		ok := true
		for _, a := range want {
			if !strings.Contains(text, a) {
				ok = false
			}
		}
		if ok && strings.Contains(text, id) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("vmm events output lacks %v:\n%s", want, text)
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = ev.Process.Signal(syscall.SIGINT)
	<-readDone
	if err := ev.Wait(); err != nil {
		t.Fatalf("vmm events did not exit cleanly on SIGINT: %v", err)
	}
}

func TestBootFailureIsFailedWithReason(t *testing.T) {
	d := startDaemon(t, options{emuEnv: []string{"FCEMU_FAULTS=fail PUT /boot-source=kernel is on fire"}})
	r, err := d.sb.Create(t.Context(), &sandboxv1.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	sb := d.waitState(r.GetSandbox().GetId(), sandboxv1.SandboxState_SANDBOX_STATE_FAILED, 10*time.Second)
	if !strings.Contains(sb.GetFailureReason(), "kernel is on fire") {
		t.Fatalf("failure reason %q lacks Firecracker's message", sb.GetFailureReason())
	}
	if sb.GetProcess().GetPid() != 0 {
		t.Fatalf("failed sandbox still reports pid %d", sb.GetProcess().GetPid())
	}
	// The CLI's --wait reports the failure with a non-zero exit.
	_, errOut, code := d.vmm("create", "--wait")
	if code == 0 || !strings.Contains(errOut, "kernel is on fire") {
		t.Fatalf("create --wait on failure: exit %d, stderr %q", code, errOut)
	}
}

func TestVMMCrashMovesToFailedWithEvent(t *testing.T) {
	d := startDaemon(t, options{emuEnv: []string{"FCEMU_FAULTS=exit-after-boot 400=3"}})
	stream, err := d.sb.Events(t.Context(), &sandboxv1.EventsRequest{Actions: []string{"exited"}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := d.sb.Create(t.Context(), &sandboxv1.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetSandbox().GetId()
	d.waitState(id, sandboxv1.SandboxState_SANDBOX_STATE_READY, 10*time.Second)
	ev, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if ev.GetSandboxId() != id || ev.GetState() != sandboxv1.SandboxState_SANDBOX_STATE_FAILED {
		t.Fatalf("exited event = %v", ev)
	}
	sb := d.waitState(id, sandboxv1.SandboxState_SANDBOX_STATE_FAILED, 5*time.Second)
	if !strings.Contains(sb.GetFailureReason(), "3") {
		t.Fatalf("failure reason %q lacks the exit status", sb.GetFailureReason())
	}
}

func TestStopTimeoutForcesKill(t *testing.T) {
	d := startDaemon(t, options{emuEnv: []string{"FCEMU_IGNORE_CTRL_ALT_DEL=1"}})
	r, err := d.sb.Create(t.Context(), &sandboxv1.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetSandbox().GetId()
	d.waitState(id, sandboxv1.SandboxState_SANDBOX_STATE_READY, 10*time.Second)
	t0 := time.Now()
	s, err := d.sb.Stop(t.Context(), &sandboxv1.StopRequest{Id: id, Timeout: durationpb.New(400 * time.Millisecond)})
	took := time.Since(t0)
	if err != nil {
		t.Fatal(err)
	}
	if s.GetSandbox().GetState() != sandboxv1.SandboxState_SANDBOX_STATE_STOPPED {
		t.Fatalf("state after stop = %v", s.GetSandbox().GetState())
	}
	if took < 400*time.Millisecond || took > 5*time.Second {
		t.Fatalf("stop took %v, want the 400ms timeout then a kill", took)
	}
	if pids := testutil.ProcessesOf(testutil.Emulator(t)); len(pids) != 0 {
		t.Fatalf("VMM still running after forced stop: %v", pids)
	}
}

func TestRemoveWhileStarting(t *testing.T) {
	d := startDaemon(t, options{emuEnv: []string{"FCEMU_BOOT_DELAY_MS=20000"}})
	r, err := d.sb.Create(t.Context(), &sandboxv1.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetSandbox().GetId()
	if r.GetSandbox().GetState() != sandboxv1.SandboxState_SANDBOX_STATE_STARTING {
		t.Fatalf("create returned state %v, want STARTING", r.GetSandbox().GetState())
	}
	time.Sleep(300 * time.Millisecond) // the emulator is up, InstanceStart hangs in the boot delay
	if _, err := d.sb.Remove(t.Context(), &sandboxv1.RemoveRequest{Id: id}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("remove without force while starting: %v, want FailedPrecondition", err)
	}
	t0 := time.Now()
	if _, err := d.sb.Remove(t.Context(), &sandboxv1.RemoveRequest{Id: id, Force: true}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took > 5*time.Second {
		t.Fatalf("forced remove while starting took %v", took)
	}
	if pids := testutil.ProcessesOf(testutil.Emulator(t)); len(pids) != 0 {
		t.Fatalf("VMM still running after remove: %v", pids)
	}
	if dirs := d.sandboxDirs(); len(dirs) != 0 {
		t.Fatalf("sandbox dirs left: %v", dirs)
	}
}

func TestTTLExpiry(t *testing.T) {
	d := startDaemon(t, options{})
	stream, err := d.sb.Events(t.Context(), &sandboxv1.EventsRequest{Actions: []string{"expired", "removed"}})
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(d.mustVMM("create", "--ttl", "1"))
	var got []string
	for len(got) < 2 {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if ev.GetSandboxId() == id {
			got = append(got, ev.GetAction())
		}
	}
	if got[0] != "expired" || got[1] != "removed" {
		t.Fatalf("events = %v, want expired then removed", got)
	}
	if _, err := d.sb.Inspect(t.Context(), &sandboxv1.InspectRequest{Id: id}); status.Code(err) != codes.NotFound {
		t.Fatalf("inspect after expiry: %v", err)
	}
	if dirs := d.sandboxDirs(); len(dirs) != 0 {
		t.Fatalf("sandbox dirs left: %v", dirs)
	}
}

func TestFiftyConcurrentCreates(t *testing.T) {
	// 50 default sandboxes pass the budget derived from a small host.
	d := startDaemon(t, options{extra: "[limits]\nmax_total_vcpus = 64\nmax_total_memory_mib = 32768\n"})
	const n = 50
	ids := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			r, err := d.sb.Create(t.Context(), &sandboxv1.CreateRequest{Labels: map[string]string{"batch": "fifty"}})
			if err != nil {
				errs <- err
				return
			}
			ids[i] = r.GetSandbox().GetId()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Fatalf("duplicate id %s", id)
		}
		seen[id] = true
	}
	for _, id := range ids {
		d.waitState(id, sandboxv1.SandboxState_SANDBOX_STATE_READY, 60*time.Second)
	}
	l, err := d.sb.List(t.Context(), &sandboxv1.ListRequest{Labels: map[string]string{"batch": "fifty"}, States: []sandboxv1.SandboxState{sandboxv1.SandboxState_SANDBOX_STATE_READY}})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.GetSandboxes()) != n {
		t.Fatalf("list ready = %d sandboxes, want %d", len(l.GetSandboxes()), n)
	}
	disks := map[string]bool{}
	for _, s := range l.GetSandboxes() {
		disks[s.GetHardware().GetDisk()] = true
	}
	if len(disks) != n {
		t.Fatalf("%d distinct disks for %d sandboxes", len(disks), n)
	}
	for _, id := range ids {
		wg.Go(func() {
			if _, err := d.sb.Remove(context.WithoutCancel(t.Context()), &sandboxv1.RemoveRequest{Id: id, Force: true}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if dirs := d.sandboxDirs(); len(dirs) != 0 {
		t.Fatalf("sandbox dirs left: %d", len(dirs))
	}
}

func TestShutdownStopsEverySandbox(t *testing.T) {
	d := startDaemon(t, options{})
	for range 3 {
		d.mustVMM("create", "--wait")
	}
	if n := len(testutil.ProcessesOf(testutil.Emulator(t))); n != 3 {
		t.Fatalf("%d VMMs running, want 3", n)
	}
	d.stop() // SIGTERM, expects exit 0 and the socket gone
	if pids := testutil.ProcessesOf(testutil.Emulator(t)); len(pids) != 0 {
		t.Fatalf("VMMs left after daemon shutdown: %v", pids)
	}
	if dirs := d.sandboxDirs(); len(dirs) != 0 {
		t.Fatalf("sandbox dirs left after daemon shutdown: %v", dirs)
	}
}

func TestSecondDaemonOnSameSocketRefused(t *testing.T) {
	d := startDaemon(t, options{})
	cmd := exec.Command(testutil.Binary(t, "vmm-daemon"), "--config", d.config)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("second daemon started on a live socket:\n%s", out)
	}
	if !strings.Contains(string(out), d.sock) {
		t.Fatalf("refusal does not name the socket:\n%s", out)
	}
	// The first daemon still answers.
	if _, err := d.sb.List(t.Context(), &sandboxv1.ListRequest{}); err != nil {
		t.Fatalf("first daemon broken by the second: %v", err)
	}
}

func TestHealthUnimplementedAndPlainErrors(t *testing.T) {
	d := startDaemon(t, options{})
	h, err := healthpb.NewHealthClient(d.conn).Check(t.Context(), &healthpb.HealthCheckRequest{})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v", h, err)
	}
	run, err := d.sb.Run(t.Context(), &sandboxv1.RunRequest{Id: "01jabcdefghj"})
	if err == nil {
		_, err = run.Recv()
	}
	if status.Code(err) != codes.Unimplemented || !strings.Contains(status.Convert(err).Message(), "agent") {
		t.Fatalf("Run: %v, want Unimplemented naming the guest agent", err)
	}
	_, errOut, code := d.vmm("snapshot", "restore", "0000000000zz")
	if code == 0 || strings.Contains(errOut, "rpc error") || !strings.HasPrefix(errOut, "vmm: ") || !strings.Contains(errOut, "not found") {
		t.Fatalf("snapshot restore of an unknown snapshot: exit %d, stderr %q: want a plain sentence", code, errOut)
	}
}

func TestCLIErrorsArePlainSentences(t *testing.T) {
	d := startDaemon(t, options{})
	_, errOut, code := d.vmm("inspect", "0000000000zz")
	if code == 0 || !strings.Contains(errOut, "not found") || strings.Contains(errOut, "rpc error") {
		t.Fatalf("inspect unknown: exit %d, stderr %q", code, errOut)
	}
	missing := filepath.Join(d.dir, "nope.sock")
	cmd := exec.Command(testutil.Binary(t, "vmm"), "list")
	cmd.Env = append(os.Environ(), "VMM_SOCKET="+missing)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), missing) || !strings.Contains(string(out), "no daemon") {
		t.Fatalf("no daemon: %v\n%s", err, out)
	}
}

func TestSecondDaemonOnSameDataDirRefused(t *testing.T) {
	d := startDaemon(t, options{})
	conf, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(d.dir, "other.toml")
	body := strings.Replace(string(conf), d.sock, filepath.Join(d.dir, "other.sock"), 1)
	if err := os.WriteFile(other, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(testutil.Binary(t, "vmm-daemon"), "--config", other).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another vmm-daemon") || !strings.Contains(string(out), d.data) {
		t.Fatalf("second daemon on the same data dir: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(d.dir, "other.sock")); !os.IsNotExist(err) {
		t.Fatalf("the refused daemon left its socket: %v", err)
	}
	if _, err := d.sb.List(t.Context(), &sandboxv1.ListRequest{}); err != nil {
		t.Fatalf("first daemon broken by the second: %v", err)
	}
}
