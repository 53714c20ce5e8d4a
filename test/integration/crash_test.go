package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	vmmdaemon "github.com/firecracker-vmm/firecracker-vmm/internal/daemon"
	"github.com/firecracker-vmm/firecracker-vmm/internal/sandbox"
	"github.com/firecracker-vmm/firecracker-vmm/internal/store"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// crashEnv is what a crash case's operation works with.
type crashEnv struct {
	d *daemon
	// sb is the sandbox made ready before the operation (nil for the
	// create cases); snap the snapshot taken of it (restore cases).
	sb   *sandboxv1.Sandbox
	snap *sandboxv1.Snapshot
	// createdID is the sandbox the operation created, when its Create or
	// Restore call returned before the daemon died.
	createdID string
}

// want describes the state found after the restart.
type crashWant struct {
	// orig is the state the sandbox made before the operation (env.sb)
	// must be in; unspecified means it must be gone.
	orig sandboxv1.SandboxState
	// fresh lists the states the sandbox the operation creates may be in
	// (empty: there must be none). It must exist when the Create or
	// Restore call returned its id, or when recorded is set (its record
	// was durable when the daemon died); otherwise it may be missing.
	fresh    []sandboxv1.SandboxState
	recorded bool
	// snapshots is how many snapshots the catalog must list.
	snapshots int
}

// anyOf lists acceptable states.
func anyOf(s ...sandboxv1.SandboxState) []sandboxv1.SandboxState { return s }

// crashCase kills the daemon at one crash point of an operation.
type crashCase struct {
	point string
	// setup is what runs before the operation: "" (nothing), "ready" (a
	// ready sandbox), "stopped" (a stopped one) or "snapshot" (a ready
	// sandbox and a snapshot of it).
	setup string
	// op performs the operation during which the daemon dies.
	op   func(t *testing.T, e *crashEnv)
	want crashWant
}

const (
	ready   = sandboxv1.SandboxState_SANDBOX_STATE_READY
	stopped = sandboxv1.SandboxState_SANDBOX_STATE_STOPPED
	failed  = sandboxv1.SandboxState_SANDBOX_STATE_FAILED
)

// opCreate creates a sandbox; the call either returns (the daemon dies
// during the boot) or fails because the daemon died.
func opCreate(t *testing.T, e *crashEnv) {
	r, err := e.d.sb.Create(t.Context(), &sandboxv1.CreateRequest{})
	if err == nil {
		e.createdID = r.GetSandbox().GetId()
	}
}

func opStop(t *testing.T, e *crashEnv) {
	_, _ = e.d.sb.Stop(t.Context(), &sandboxv1.StopRequest{Id: e.sb.GetId()})
}

func opRemove(t *testing.T, e *crashEnv) {
	_, _ = e.d.sb.Remove(t.Context(), &sandboxv1.RemoveRequest{Id: e.sb.GetId()})
}

func opCheckpoint(t *testing.T, e *crashEnv) {
	_, _ = e.d.snap.Checkpoint(t.Context(), &sandboxv1.CheckpointRequest{SandboxId: e.sb.GetId(), Name: "crash"})
}

func opRestore(t *testing.T, e *crashEnv) {
	r, err := e.d.snap.Restore(t.Context(), &sandboxv1.RestoreRequest{SnapshotId: e.snap.GetId()})
	if err == nil {
		e.createdID = r.GetSandbox().GetId()
	}
}

// crashCases has one case per crash point (TestCrashPointsAreCovered
// keeps it complete).
var crashCases = []crashCase{
	{sandbox.CrashCreateDir, "", opCreate, crashWant{}},
	{sandbox.CrashCreateDisk, "", opCreate, crashWant{}},
	{sandbox.CrashCreateNetwork, "", opCreate, crashWant{}},
	{sandbox.CrashCreateRecorded, "", opCreate, crashWant{fresh: anyOf(ready, failed), recorded: true}},
	{sandbox.CrashBootStarted, "", opCreate, crashWant{fresh: anyOf(ready)}},
	{sandbox.CrashStopStopping, "ready", opStop, crashWant{orig: stopped}},
	{sandbox.CrashStopExited, "ready", opStop, crashWant{orig: stopped}},
	{sandbox.CrashRemoveMarked, "stopped", opRemove, crashWant{}},
	{sandbox.CrashRemoveReleased, "stopped", opRemove, crashWant{}},
	{sandbox.CrashCheckpointPaused, "ready", opCheckpoint, crashWant{orig: ready}},
	{sandbox.CrashCheckpointWritten, "ready", opCheckpoint, crashWant{orig: ready}},
	{sandbox.CrashCheckpointResumed, "ready", opCheckpoint, crashWant{orig: ready}},
	{sandbox.CrashCheckpointCommitted, "ready", opCheckpoint, crashWant{orig: ready, snapshots: 1}},
	{sandbox.CrashRestoreFiles, "snapshot", opRestore, crashWant{orig: ready, snapshots: 1}},
	{sandbox.CrashRestoreNetwork, "snapshot", opRestore, crashWant{orig: ready, snapshots: 1}},
	{sandbox.CrashRestoreRecorded, "snapshot", opRestore, crashWant{orig: ready, fresh: anyOf(ready, failed), recorded: true, snapshots: 1}},
	{sandbox.CrashRestoreStarted, "snapshot", opRestore, crashWant{orig: ready, fresh: anyOf(ready), snapshots: 1}},
}

// TestCrashPointsAreCovered: every crash point the manager has is tested.
func TestCrashPointsAreCovered(t *testing.T) {
	var got []string
	for _, c := range crashCases {
		got = append(got, c.point)
	}
	if !slices.Equal(got, sandbox.CrashPoints) {
		t.Fatalf("crash cases %v, want one per sandbox.CrashPoints %v", got, sandbox.CrashPoints)
	}
}

// TestCrashAtEachStepRecovers kills the daemon (SIGKILL) at each crash
// point of create, boot, stop, remove, checkpoint and restore, with
// networking on, starts it again on the same data dir and checks that the
// state is consistent: each sandbox in the state its last durable step
// implies, every VMM process owned by a ready sandbox, no directory,
// namespace or lease without a record, no half-written snapshot and no
// committed one lost. Each restarted daemon then creates and restores
// normally, and its shutdown leaves nothing.
func TestCrashAtEachStepRecovers(t *testing.T) {
	for i, c := range crashCases {
		t.Run(c.point, func(t *testing.T) {
			cidr := fmt.Sprintf("10.%d.0.0/24", 210+i%40)
			bridge := fmt.Sprintf("vmmcr%d", i)
			_, nsPath := hostNamespace(t)
			d := startDaemon(t, options{network: fmt.Sprintf("bridge = %q\ncidr = %q\n", bridge, cidr), netns: nsPath})
			runCrashCase(t, d, c, nil)
		})
	}
}

// TestJailedCrashLeavesNoJail kills a jailing daemon where a jail exists
// without a record (create.disk), where a jailed VMM booted without its pid
// recorded (boot.started), and half-way through a removal: the restarted
// daemon removes the stray jail and its cgroups, re-adopts the booted VMM
// and finishes the removal.
func TestJailedCrashLeavesNoJail(t *testing.T) {
	for _, point := range []string{sandbox.CrashCreateDisk, sandbox.CrashBootStarted, sandbox.CrashRemoveMarked} {
		t.Run(point, func(t *testing.T) {
			var c crashCase
			for _, cc := range crashCases {
				if cc.point == point {
					c = cc
				}
			}
			dir := testutil.ShortDir(t)
			section, base, parent := jailerSection(t, dir)
			d := startDaemonAt(t, dir, options{extra: section})
			defer func() {
				if t.Failed() {
					t.Log(d.logText())
				}
			}()
			runCrashCase(t, d, c, &jailDirs{base: base, cgroup: filepath.Join("/sys/fs/cgroup/cpu", parent)})
		})
	}
}

// jailDirs are where a jailed test's jails and (cpu) cgroups live.
type jailDirs struct {
	base, cgroup string
}

// procs returns the pids in the jails' cgroups.
func (j *jailDirs) procs() []int { return cgroupProcs(j.cgroup) }

// check checks that a jail and a cgroup exist exactly for each ready
// sandbox.
func (j *jailDirs) check(t *testing.T, listed map[string]*sandboxv1.Sandbox) {
	t.Helper()
	jails, _ := filepath.Glob(filepath.Join(j.base, "*", "*"))
	var want []string
	for _, sb := range listed {
		if sb.GetState() == ready {
			want = append(want, jailOf(sb))
		}
	}
	slices.Sort(jails)
	slices.Sort(want)
	if !slices.Equal(jails, want) {
		t.Errorf("jails after the restart: %v, want %v", jails, want)
	}
	cgroups, _ := filepath.Glob(filepath.Join(j.cgroup, "*", "cgroup.procs"))
	if len(cgroups) != len(want) {
		t.Errorf("cgroups after the restart: %v, want %d", cgroups, len(want))
	}
}

// runCrashCase sets up, runs the operation until the daemon dies at c's
// crash point, restarts the daemon and checks what it finds. jail is nil
// unless the daemon jails its VMMs.
func runCrashCase(t *testing.T, d *daemon, c crashCase, jail *jailDirs) {
	e := &crashEnv{d: d}
	// A first run of the daemon makes and removes a sandbox and stops
	// cleanly, so that its events are written and those the crash may
	// lose come after them; the next run dies at the crash point.
	warm := createAndWait(t, d, 0)
	if _, err := d.sb.Remove(t.Context(), &sandboxv1.RemoveRequest{Id: warm.GetId(), Force: true}); err != nil {
		t.Fatal(err)
	}
	d.stop()
	d.env = []string{vmmdaemon.CrashEnv + "=" + c.point}
	d.start()
	switch c.setup {
	case "ready", "snapshot", "stopped":
		e.sb = createAndWait(t, d, 0)
		if c.setup == "stopped" {
			if _, err := d.sb.Stop(t.Context(), &sandboxv1.StopRequest{Id: e.sb.GetId()}); err != nil {
				t.Fatal(err)
			}
		}
		if c.setup == "snapshot" {
			r, err := d.snap.Checkpoint(t.Context(), &sandboxv1.CheckpointRequest{SandboxId: e.sb.GetId(), Name: "before"})
			if err != nil {
				t.Fatal(err)
			}
			e.snap = r.GetSnapshot()
		}
	}
	// An operator's shell working in the sandbox's directory is not a
	// VMM: the restart must leave it alone.
	var bystander *exec.Cmd
	if e.sb != nil {
		bystander = exec.Command("sleep", "300")
		bystander.Dir = filepath.Join(d.data, "sandboxes", e.sb.GetId())
		if err := bystander.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = bystander.Process.Kill(); _ = bystander.Wait() }()
	}
	seen := watchEvents(t, d)
	c.op(t, e)
	d.waitKilled(15 * time.Second)
	if !strings.Contains(d.logText(), "crash point reached") {
		t.Fatalf("the daemon died, but not at its crash point\n%s", d.logText())
	}
	lastSeen := <-seen
	d.env = nil
	d.start()

	if bystander != nil {
		if !testutil.Alive(bystander.Process.Pid) {
			t.Errorf("a process working in a sandbox directory (not a VMM) was killed at start")
		}
		_ = bystander.Process.Kill()
		_ = bystander.Wait()
	}

	// Each sandbox is in the state its last durable step implies.
	list, err := d.sb.List(t.Context(), &sandboxv1.ListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*sandboxv1.Sandbox{}
	for _, sb := range list.GetSandboxes() {
		got[sb.GetId()] = sb
	}
	origID := e.sb.GetId()
	if sb, found := got[origID]; c.want.orig != 0 && !found {
		t.Errorf("sandbox %s: not listed after the restart, want %v", origID, c.want.orig)
	} else if found && sb.GetState() != c.want.orig {
		t.Errorf("sandbox %s: %v after the restart (reason %q), want %v", origID, sb.GetState(), sb.GetFailureReason(), c.want.orig)
	}
	// The sandbox the operation created: the one returned, or else any
	// sandbox listed besides the original.
	var fresh []*sandboxv1.Sandbox
	for id, sb := range got {
		if id != origID {
			fresh = append(fresh, sb)
		}
	}
	switch {
	case len(fresh) > 1:
		t.Errorf("%d new sandboxes after the restart, want at most one", len(fresh))
	case len(fresh) == 0 && (e.createdID != "" || c.want.recorded):
		t.Errorf("the new sandbox (id %q) is not listed after the restart, want one in %v", e.createdID, c.want.fresh)
	case len(fresh) == 1 && e.createdID != "" && fresh[0].GetId() != e.createdID:
		t.Errorf("new sandbox %s listed, but the call returned %s", fresh[0].GetId(), e.createdID)
	case len(fresh) == 1 && !slices.Contains(c.want.fresh, fresh[0].GetState()):
		t.Errorf("new sandbox %s: %v after the restart (reason %q), want one of %v", fresh[0].GetId(),
			fresh[0].GetState(), fresh[0].GetFailureReason(), c.want.fresh)
	}
	var jailed func() []int
	if jail != nil {
		jailed = jail.procs
		jail.check(t, got)
	}
	checkNothingLeaked(t, d, got, jailed)

	// No committed snapshot is lost, none is half-written, and each one
	// still restores.
	snaps, err := d.snap.ListSnapshots(t.Context(), &sandboxv1.ListSnapshotsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(snaps.GetSnapshots()); n != c.want.snapshots {
		t.Errorf("%d snapshots after the restart, want %d", n, c.want.snapshots)
	}
	if tmp := d.snapshotTemps(); len(tmp) != 0 {
		t.Errorf("half-written snapshots left: %v", tmp)
	}
	// A ready sandbox runs (a checkpoint's pause was undone) and can be
	// checkpointed: the checkpoint succeeds and leaves it running and
	// READY. Its snapshots restore.
	for _, sb := range got {
		if sb.GetState() == ready {
			if st := vmState(t, sb); st != "Running" {
				t.Errorf("sandbox %s: its VM is %q after the restart, want Running", sb.GetId(), st)
			}
			checkpointSurvivor(t, d, sb)
		}
	}
	for _, s := range snaps.GetSnapshots() {
		r, err := d.snap.Restore(t.Context(), &sandboxv1.RestoreRequest{SnapshotId: s.GetId()})
		if err != nil {
			t.Fatalf("restoring snapshot %s after the restart: %v", s.GetId(), err)
		}
		got[r.GetSandbox().GetId()] = d.waitState(r.GetSandbox().GetId(), ready, 15*time.Second)
	}
	// The restored daemon creates normally, with an address nobody holds.
	another := createAndWait(t, d, 0)
	for _, sb := range got {
		if ip := sb.GetNetwork().GetIpAddress(); ip != "" && ip == another.GetNetwork().GetIpAddress() {
			t.Errorf("new sandbox got address %s, which sandbox %s holds", ip, sb.GetId())
		}
	}
	// No event number a client saw from the killed daemon is reused.
	checkSeqNotReused(t, d, lastSeen)
	// Stopped ("stop" mode: d.stop checks that no VMM and no sandbox
	// namespace is left), the store holds no sandbox record. (Snapshots
	// are the catalog's alone: the store keeps no copy to compare.)
	d.stop()
	st, err := store.Open(store.Path(d.data), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if recs, err := st.ListSandboxes(t.Context()); err != nil || len(recs) != 0 {
		t.Errorf("store after a stop-mode shutdown: %d sandbox records, %v; want none", len(recs), err)
	}
}

// checkpointSurvivor takes a Full checkpoint of sb, a sandbox READY after
// a restart, and checks that it succeeds and leaves the sandbox READY with
// its VM running. A VM left paused is resumed for the checks that follow.
func checkpointSurvivor(t *testing.T, d *daemon, sb *sandboxv1.Sandbox) {
	t.Helper()
	if _, err := d.snap.Checkpoint(t.Context(), &sandboxv1.CheckpointRequest{SandboxId: sb.GetId(), Name: "survivor"}); err != nil {
		t.Errorf("sandbox %s: Full checkpoint after the restart: %v", sb.GetId(), err)
	}
	checkResumed(t, d, sb, fmt.Sprintf("sandbox %s after its checkpoint", sb.GetId()))
}

// watchEvents follows d's events until d dies and then sends the last one
// it saw (nil for none).
func watchEvents(t *testing.T, d *daemon) <-chan *sandboxv1.Event {
	t.Helper()
	stream, err := d.sb.Events(t.Context(), &sandboxv1.EventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan *sandboxv1.Event, 1)
	go func() {
		var last *sandboxv1.Event
		for {
			ev, err := stream.Recv()
			if err != nil {
				out <- last
				return
			}
			last = ev
		}
	}()
	return out
}

// checkSeqNotReused checks that the restarted d never gave seen's
// sequence number to another event: replaying from just before it yields
// seen itself (it was written) or only later numbers.
func checkSeqNotReused(t *testing.T, d *daemon, seen *sandboxv1.Event) {
	t.Helper()
	if seen == nil || seen.GetSeq() < 2 { // since 0 means "live only"
		return
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	stream, err := d.sb.Events(ctx, &sandboxv1.EventsRequest{Since: seen.GetSeq() - 1})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := stream.Recv()
	if err != nil {
		t.Fatalf("events since %d after the restart: %v", seen.GetSeq()-1, err)
	}
	if ev.GetSeq() == seen.GetSeq() && (ev.GetSandboxId() != seen.GetSandboxId() || ev.GetAction() != seen.GetAction()) {
		t.Errorf("event %d was %s %s before the crash and is %s %s after it: event numbers were reused",
			seen.GetSeq(), seen.GetSandboxId(), seen.GetAction(), ev.GetSandboxId(), ev.GetAction())
	}
}

// checkNothingLeaked checks, right after a restart, that every VMM process
// (a process working in a sandbox directory, or listed by jailed) belongs
// to a ready sandbox, and that sandbox directories and namespaces exist
// exactly for the listed sandboxes.
func checkNothingLeaked(t *testing.T, d *daemon, listed map[string]*sandboxv1.Sandbox, jailed func() []int) {
	t.Helper()
	sandboxes := filepath.Join(d.data, "sandboxes")
	owned := map[int]string{}
	for id, sb := range listed {
		if sb.GetState() == ready {
			owned[int(sb.GetProcess().GetPid())] = id
		}
	}
	pids := testutil.ProcessesIn(sandboxes)
	if jailed != nil {
		pids = append(pids, jailed()...)
	}
	for _, pid := range pids {
		if _, ok := owned[pid]; !ok {
			t.Errorf("VMM process %d runs, but no ready sandbox owns it", pid)
		}
		delete(owned, pid)
	}
	for pid, id := range owned {
		t.Errorf("ready sandbox %s: its VMM (pid %d) does not run", id, pid)
	}
	dirs := d.sandboxDirs()
	slices.Sort(dirs)
	var want []string
	for id := range listed {
		want = append(want, id)
	}
	slices.Sort(want)
	if !slices.Equal(dirs, want) {
		t.Errorf("sandbox directories %v, want one per listed sandbox %v", dirs, want)
	}
	if d.netns == "" {
		return
	}
	for _, m := range sandboxIDInLog.FindAllStringSubmatch(d.logText(), -1) {
		_, err := os.Stat(sandboxNetns(m[1]))
		if _, ok := listed[m[1]]; ok != (err == nil) {
			t.Errorf("sandbox %s: listed %v, network namespace exists %v", m[1], ok, err == nil)
		}
	}
}

// cgroupProcs returns the pids in the cgroups directly under parent.
func cgroupProcs(parent string) []int {
	var pids []int
	files, _ := filepath.Glob(filepath.Join(parent, "*", "cgroup.procs"))
	for _, f := range files {
		data, _ := os.ReadFile(f)
		for _, field := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(field); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}
