package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/firecracker"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// How an adopted sandbox's life ends in TestAdoptedSandboxesWorkLikeNewOnes.
const (
	endGuest  = "guest shutdown" // the guest shuts down cleanly, then Remove
	endStop   = "stop"           // Stop, then Remove
	endRemove = "remove"         // Remove --force while it runs
)

// adoptCase is one sandbox made before the restart.
type adoptCase struct {
	name string
	// dirty: created with dirty page tracking; a Diff checkpoint is taken
	// after the Full one.
	dirty bool
	end   string
}

var adoptCases = []adoptCase{
	{"plain-guest-shutdown", false, endGuest},
	{"dirty-guest-shutdown", true, endGuest},
	{"plain-stop", false, endStop},
	{"dirty-remove", true, endRemove},
}

// TestAdoptedSandboxesWorkLikeNewOnes creates sandboxes (networking on,
// some with dirty page tracking), restarts the daemon in "leave" mode and
// then takes every adopted sandbox down the paths a new one takes: a Full
// checkpoint succeeds and leaves the VM running and the sandbox READY, a
// Diff checkpoint on top of it succeeds (dirty-tracking sandboxes), each
// snapshot restores into a READY, reachable sandbox, a clean guest
// shutdown ends in STOPPED (not FAILED) with an exited event, Stop and
// Remove work, and nothing is left: no VMM process, directory, namespace
// or jail. It runs with VMMs started directly and under the jailer.
func TestAdoptedSandboxesWorkLikeNewOnes(t *testing.T) {
	modes := []struct {
		name   string
		jailed bool
		net    string
	}{
		{"direct", false, "bridge = \"vmmad0\"\ncidr = \"10.208.0.0/24\"\n"},
		{"jailed", true, "bridge = \"vmmad1\"\ncidr = \"10.209.0.0/24\"\n"},
	}
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			dir := testutil.ShortDir(t)
			hostNS, nsPath := hostNamespace(t)
			o := options{onShutdown: "leave", network: mode.net, netns: nsPath}
			var jail *jailDirs
			if mode.jailed {
				section, base, parent := jailerSection(t, dir)
				o.extra = section
				jail = &jailDirs{base: base, cgroup: filepath.Join("/sys/fs/cgroup/cpu", parent)}
			}
			d := startDaemonAt(t, dir, o)
			sweepOnFailure(t, d, jail)

			before := make([]*sandboxv1.Sandbox, len(adoptCases))
			for i, c := range adoptCases {
				r, err := d.sb.Create(t.Context(), &sandboxv1.CreateRequest{TrackDirtyPages: c.dirty, Labels: map[string]string{"case": c.name}})
				if err != nil {
					t.Fatal(err)
				}
				before[i] = d.waitState(r.GetSandbox().GetId(), ready, 15*time.Second)
			}
			d.stop()
			for i, sb := range before {
				if !testutil.Alive(int(sb.GetProcess().GetPid())) {
					t.Fatalf("%s: the VMM of sandbox %s did not outlive a 'leave' shutdown", adoptCases[i].name, sb.GetId())
				}
			}
			d.start()

			var ids []string // every sandbox this test made, restored ones too
			for i, c := range adoptCases {
				ids = append(ids, before[i].GetId())
				t.Run(c.name, func(t *testing.T) {
					ids = append(ids, checkAdopted(t, d, hostNS, c, before[i], jail)...)
				})
			}

			// Nothing is left of any of them.
			var pids []int
			if jail != nil {
				pids = jail.procs()
				if jails, _ := filepath.Glob(filepath.Join(jail.base, "*", "*")); len(jails) != 0 {
					t.Errorf("jails left: %v", jails)
				}
			}
			if pids = append(pids, testutil.ProcessesIn(filepath.Join(d.data, "sandboxes"))...); len(pids) != 0 {
				t.Errorf("VMM processes left: %v", pids)
			}
			if dirs := d.sandboxDirs(); len(dirs) != 0 {
				t.Errorf("sandbox directories left: %v", dirs)
			}
			left := sandboxNamespaces()
			for _, id := range ids {
				if left["vmm-"+id] {
					t.Errorf("network namespace vmm-%s left", id)
				}
			}
			if l, err := d.sb.List(t.Context(), &sandboxv1.ListRequest{}); err != nil || len(l.GetSandboxes()) != 0 {
				t.Errorf("list at the end: %v (%v), want no sandbox", l.GetSandboxes(), err)
			}
		})
	}
}

// checkAdopted runs the checks of one adopted sandbox (before is how it was
// before the restart) and ends it as c says. It returns the ids of the
// sandboxes it restored (all removed again).
func checkAdopted(t *testing.T, d *daemon, hostNS string, c adoptCase, before *sandboxv1.Sandbox, jail *jailDirs) []string {
	id := before.GetId()
	sb := d.waitState(id, ready, 2*time.Second)
	if sb.GetProcess().GetPid() != before.GetProcess().GetPid() {
		t.Fatalf("pid %d after the restart, want %d (the same VMM, re-adopted)", sb.GetProcess().GetPid(), before.GetProcess().GetPid())
	}
	if st := vmState(t, sb); st != "Running" {
		t.Errorf("its VM is %q right after the restart, want Running", st)
	}
	if !ping(t, hostNS, sb.GetNetwork().GetIpAddress()) {
		t.Errorf("it does not answer ping at %s after the restart", sb.GetNetwork().GetIpAddress())
	}

	// Checkpoints: Full, then (dirty page tracking) a Diff on top of it.
	var snaps []*sandboxv1.Snapshot
	full, err := d.snap.Checkpoint(t.Context(), &sandboxv1.CheckpointRequest{SandboxId: id, Name: "full"})
	if err != nil {
		t.Errorf("Full checkpoint of the adopted sandbox: %v", err)
	} else {
		snaps = append(snaps, full.GetSnapshot())
	}
	checkResumed(t, d, sb, "after the Full checkpoint")
	if c.dirty && full != nil {
		diff, err := d.snap.Checkpoint(t.Context(), &sandboxv1.CheckpointRequest{
			SandboxId: id, Name: "diff", Type: sandboxv1.SnapshotType_SNAPSHOT_TYPE_DIFF,
		})
		switch {
		case err != nil:
			t.Errorf("Diff checkpoint of the adopted sandbox (created with dirty page tracking): %v", err)
		case diff.GetSnapshot().GetType() != sandboxv1.SnapshotType_SNAPSHOT_TYPE_DIFF || diff.GetSnapshot().GetParentId() != full.GetSnapshot().GetId():
			t.Errorf("Diff checkpoint = %v, want type DIFF on parent %s", diff.GetSnapshot(), full.GetSnapshot().GetId())
		default:
			snaps = append(snaps, diff.GetSnapshot())
		}
		checkResumed(t, d, sb, "after the Diff checkpoint")
	}

	// Every snapshot restores into a READY sandbox that answers.
	var restored []string
	for _, s := range snaps {
		r, err := d.snap.Restore(t.Context(), &sandboxv1.RestoreRequest{SnapshotId: s.GetId()})
		if err != nil {
			t.Errorf("restoring %s snapshot %s: %v", s.GetType(), s.GetId(), err)
			continue
		}
		rid := r.GetSandbox().GetId()
		restored = append(restored, rid)
		rs := d.waitState(rid, ready, 15*time.Second)
		if st := vmState(t, rs); st != "Running" {
			t.Errorf("sandbox restored from %s snapshot %s: its VM is %q, want Running", s.GetType(), s.GetId(), st)
		}
		if !ping(t, hostNS, rs.GetNetwork().GetIpAddress()) {
			t.Errorf("sandbox restored from %s snapshot %s does not answer at %s", s.GetType(), s.GetId(), rs.GetNetwork().GetIpAddress())
		}
		if _, err := d.sb.Remove(t.Context(), &sandboxv1.RemoveRequest{Id: rid, Force: true}); err != nil {
			t.Errorf("removing restored sandbox %s: %v", rid, err)
		}
	}

	pid := int(sb.GetProcess().GetPid())
	switch c.end {
	case endGuest:
		checkGuestShutdown(t, d, sb)
	case endStop:
		if _, err := d.sb.Stop(t.Context(), &sandboxv1.StopRequest{Id: id}); err != nil {
			t.Fatalf("stop: %v", err)
		}
		d.waitState(id, stopped, 5*time.Second)
	}
	if c.end != endRemove && testutil.Alive(pid) {
		t.Errorf("its VMM (pid %d) still runs in state STOPPED", pid)
	}
	if _, err := d.sb.Remove(t.Context(), &sandboxv1.RemoveRequest{Id: id, Force: c.end == endRemove}); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if _, err := d.sb.Inspect(t.Context(), &sandboxv1.InspectRequest{Id: id}); status.Code(err) != codes.NotFound {
		t.Errorf("inspect after remove: %v, want NotFound", err)
	}
	if testutil.Alive(pid) {
		t.Errorf("its VMM (pid %d) still runs after remove", pid)
	}
	if _, err := os.Stat(filepath.Join(d.data, "sandboxes", id)); !os.IsNotExist(err) {
		t.Errorf("its directory after remove: %v", err)
	}
	if _, err := os.Stat(sandboxNetns(id)); !os.IsNotExist(err) {
		t.Errorf("its network namespace after remove: %v", err)
	}
	if jail != nil {
		if _, err := os.Stat(jailOf(sb)); !os.IsNotExist(err) {
			t.Errorf("its jail after remove: %v", err)
		}
	}
	return restored
}

// checkResumed checks that a checkpoint left sb running: Inspect says
// READY and its Firecracker says Running. A VM left paused is resumed, so
// that the later checks test their own step.
func checkResumed(t *testing.T, d *daemon, sb *sandboxv1.Sandbox, when string) {
	t.Helper()
	r, err := d.sb.Inspect(t.Context(), &sandboxv1.InspectRequest{Id: sb.GetId()})
	if err != nil {
		t.Fatalf("inspect %s: %v", when, err)
	}
	if r.GetSandbox().GetState() != ready {
		t.Errorf("%s: Inspect says %v (reason %q), want READY", when, r.GetSandbox().GetState(), r.GetSandbox().GetFailureReason())
	}
	if st := vmState(t, sb); st != "Running" {
		t.Errorf("%s: GET / on its API socket says %q, want Running (Inspect says %v)", when, st, r.GetSandbox().GetState())
		c := firecracker.NewClient(sb.GetProcess().GetApiSocket())
		defer c.Close()
		if err := c.Resume(t.Context()); err != nil {
			t.Fatalf("resuming the VM the checkpoint left paused: %v", err)
		}
	}
}

// checkGuestShutdown has sb's guest shut down cleanly: Ctrl+Alt+Del
// through its API socket, to which a guest booted with reboot=k (the
// default boot args) answers by resetting, and Firecracker exits 0. The
// sandbox must end STOPPED, not FAILED, with an exited event.
func checkGuestShutdown(t *testing.T, d *daemon, sb *sandboxv1.Sandbox) {
	t.Helper()
	if !strings.Contains(sb.GetHardware().GetBootArgs(), "reboot=k") {
		t.Fatalf("boot args %q lack reboot=k: Ctrl+Alt+Del would only halt the guest", sb.GetHardware().GetBootArgs())
	}
	c := firecracker.NewClient(sb.GetProcess().GetApiSocket())
	err := c.SendCtrlAltDel(t.Context())
	c.Close()
	if err != nil {
		t.Fatalf("SendCtrlAltDel: %v", err)
	}
	got := waitFinal(t, d, sb.GetId(), 10*time.Second)
	if got.GetState() != stopped {
		t.Errorf("after a clean guest shutdown: %v (reason %q), want STOPPED", got.GetState(), got.GetFailureReason())
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	stream, err := d.sb.Events(ctx, &sandboxv1.EventsRequest{Id: sb.GetId(), Actions: []string{"exited"}, Since: 1})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := stream.Recv()
	if err != nil {
		t.Fatalf("no exited event after the guest shut down: %v", err)
	}
	if ev.GetState() != stopped {
		t.Errorf("exited event %v, want state STOPPED", ev)
	}
	if code, ok := ev.GetAttributes()["exit_code"]; ok && code != "0" {
		t.Errorf("exited event: exit_code %s, want 0", code)
	}
}

// waitFinal polls Inspect until sandbox id is STOPPED or FAILED.
func waitFinal(t *testing.T, d *daemon, id string, within time.Duration) *sandboxv1.Sandbox {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		r, err := d.sb.Inspect(t.Context(), &sandboxv1.InspectRequest{Id: id})
		if err != nil {
			t.Fatalf("inspect %s: %v", id, err)
		}
		if s := r.GetSandbox().GetState(); s == stopped || s == failed {
			return r.GetSandbox()
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s still %v %v after its guest shut down\n%s", id, r.GetSandbox().GetState(), within, d.logText())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sweepOnFailure registers a cleanup that, when the test failed, removes
// what a "leave" daemon leaves behind: it stops d, kills every VMM still
// running and deletes the network namespaces of the sandboxes d's log
// names. It runs before the daemon's own cleanup (which then finds d
// stopped).
func sweepOnFailure(t *testing.T, d *daemon, jail *jailDirs) {
	t.Helper()
	emu := testutil.Emulator(t)
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		d.stop()
		pids := append(testutil.ProcessesOf(emu), testutil.ProcessesIn(filepath.Join(d.data, "sandboxes"))...)
		if jail != nil {
			pids = append(pids, jail.procs()...)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
		for _, m := range sandboxIDInLog.FindAllStringSubmatch(d.logText(), -1) {
			ns := sandboxNetns(m[1])
			if _, err := os.Stat(ns); err == nil {
				_ = exec.Command("ip", "netns", "del", filepath.Base(ns)).Run()
			}
		}
	})
}

// TestRestartAnswersOnlyWhenRecovered freezes (SIGSTOP) three VMMs while a
// "leave" daemon is down, so that each one's API socket takes the whole
// adoption timeout (3 s) to give up on, and follows the restarted daemon
// from its first instant with Inspect calls on every sandbox. Until
// recovery has finished the daemon may refuse (UNAVAILABLE, saying it is
// recovering) or not serve at all, but it never answers NotFound or a
// state recovery has not settled yet. Recovery adopts VMMs concurrently:
// the three frozen ones cost one timeout, not three. The frozen VMMs are
// killed and their sandboxes STOPPED; the others are re-adopted READY.
func TestRestartAnswersOnlyWhenRecovered(t *testing.T) {
	const adoptTimeout = 3 * time.Second // sandbox.adoptTimeout
	d := startDaemon(t, options{onShutdown: "leave"})
	sweepOnFailure(t, d, nil)
	var healthy, frozen []*sandboxv1.Sandbox
	for i := range 5 {
		sb := createAndWait(t, d, 0)
		if i < 3 {
			frozen = append(frozen, sb)
		} else {
			healthy = append(healthy, sb)
		}
	}
	d.stop()
	for _, sb := range frozen {
		if err := syscall.Kill(int(sb.GetProcess().GetPid()), syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { // a frozen VMM ignores everything but SIGKILL
		for _, sb := range frozen {
			if testutil.Alive(int(sb.GetProcess().GetPid())) {
				_ = syscall.Kill(int(sb.GetProcess().GetPid()), syscall.SIGKILL)
			}
		}
	})
	want := map[string]sandboxv1.SandboxState{}
	for _, sb := range frozen {
		want[sb.GetId()] = stopped
	}
	for _, sb := range healthy {
		want[sb.GetId()] = ready
	}

	// A connection of its own that retries dialling at once (gRPC's
	// default backoff waits a second or more).
	conn, err := grpc.NewClient("unix://"+d.sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1, MaxDelay: 10 * time.Millisecond},
			MinConnectTimeout: 200 * time.Millisecond,
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := sandboxv1.NewSandboxServiceClient(conn)
	var (
		mu         sync.Mutex
		bad        []string
		recovering int // answers UNAVAILABLE "recovering"
		first      time.Duration
	)
	stop := make(chan struct{})
	polled := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(polled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			for id, state := range want {
				ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
				r, err := client.Inspect(ctx, &sandboxv1.InspectRequest{Id: id})
				cancel()
				mu.Lock()
				switch {
				case err == nil && r.GetSandbox().GetState() != state:
					bad = append(bad, fmt.Sprintf("%v after start: Inspect %s says %v, want %v", time.Since(start).Round(time.Millisecond), id, r.GetSandbox().GetState(), state))
				case err == nil:
					if first == 0 {
						first = time.Since(start)
					}
				case status.Code(err) == codes.Unavailable && strings.Contains(status.Convert(err).Message(), "recovering"):
					recovering++
				case status.Code(err) == codes.Unavailable || status.Code(err) == codes.DeadlineExceeded:
					// Not listening yet, or listening but not serving.
				default:
					bad = append(bad, fmt.Sprintf("%v after start: Inspect %s: %v", time.Since(start).Round(time.Millisecond), id, err))
				}
				mu.Unlock()
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	d.start()
	// d.start returned: the daemon serves. One more round of answers.
	time.Sleep(100 * time.Millisecond)
	close(stop)
	<-polled

	mu.Lock()
	defer mu.Unlock()
	for _, b := range bad[:min(len(bad), 10)] {
		t.Error(b)
	}
	if len(bad) > 10 {
		t.Errorf("... and %d more such answers", len(bad)-10)
	}
	t.Logf("first answer %v after start; %d answers said UNAVAILABLE recovering", first.Round(time.Millisecond), recovering)
	if first == 0 {
		t.Fatalf("no Inspect answered\n%s", d.logText())
	}
	if first >= 2*adoptTimeout {
		t.Errorf("the daemon answered %v after start with %d frozen VMMs, want < %v: VMMs are adopted concurrently, each within %v",
			first.Round(time.Millisecond), len(frozen), 2*adoptTimeout, adoptTimeout)
	}
	for _, sb := range frozen {
		got := d.waitState(sb.GetId(), stopped, time.Second)
		if testutil.Alive(int(sb.GetProcess().GetPid())) {
			t.Errorf("frozen VMM %d of sandbox %s still runs after recovery gave up on it", sb.GetProcess().GetPid(), got.GetId())
		}
	}
	for _, sb := range healthy {
		got := d.waitState(sb.GetId(), ready, time.Second)
		if got.GetProcess().GetPid() != sb.GetProcess().GetPid() {
			t.Errorf("sandbox %s: pid %d after the restart, want %d", sb.GetId(), got.GetProcess().GetPid(), sb.GetProcess().GetPid())
		}
		if st := vmState(t, got); st != "Running" {
			t.Errorf("sandbox %s: its VM is %q after the restart", sb.GetId(), st)
		}
	}
	for id := range want {
		if _, err := d.sb.Remove(t.Context(), &sandboxv1.RemoveRequest{Id: id, Force: true}); err != nil {
			t.Errorf("remove %s: %v", id, err)
		}
	}
}
