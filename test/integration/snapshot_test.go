package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/firecracker"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// snapshotJSON is the part of the CLI's snapshot view the tests read.
type snapshotJSON struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	SandboxID string `json:"sandbox_id"`
}

// vmState asks a sandbox's Firecracker for its state ("Running", "Paused").
func vmState(t *testing.T, sb *sandboxv1.Sandbox) string {
	t.Helper()
	c := firecracker.NewClient(sb.GetProcess().GetApiSocket())
	defer c.Close()
	info, err := c.DescribeInstance(t.Context())
	if err != nil {
		t.Fatalf("GET / on %s: %v", sb.GetProcess().GetApiSocket(), err)
	}
	return string(info.State)
}

// snapshotLeftovers lists temporary or partial entries under data/snapshots.
func (d *daemon) snapshotTemps() []string {
	var out []string
	_ = filepath.WalkDir(filepath.Join(d.data, "snapshots"), func(p string, e os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(e.Name(), ".tmp") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// TestCheckpointAndRestoreClones follows the seed's quick start through the
// CLI: checkpoint a running sandbox, restore it twice while the original
// runs, and reach all three at distinct addresses.
func TestCheckpointAndRestoreClones(t *testing.T) {
	d, hostNS := netDaemon(t, "bridge = \"vmmbr6\"\ncidr = \"10.206.0.0/24\"\n", "")
	orig := createReady(t, d)
	id := orig.GetId()

	snapID := strings.TrimSpace(d.mustVMM("snapshot", "create", id, "--name", "my-checkpoint"))
	if len(snapID) != 12 {
		t.Fatalf("snapshot create printed %q, want the snapshot id", snapID)
	}
	var snaps []snapshotJSON
	if err := json.Unmarshal([]byte(d.mustVMM("snapshot", "list", "-o", "json")), &snaps); err != nil || len(snaps) != 1 ||
		snaps[0].ID != snapID || snaps[0].Name != "my-checkpoint" || snaps[0].SandboxID != id {
		t.Fatalf("snapshot list = %+v (%v)", snaps, err)
	}
	if out := d.mustVMM("snapshot", "list", "--sandbox-id", id); !strings.Contains(out, snapID) {
		t.Fatalf("snapshot list --sandbox-id lacks it:\n%s", out)
	}
	after := d.waitState(id, sandboxv1.SandboxState_SANDBOX_STATE_READY, time.Second)
	if after.GetLastPause().AsDuration() <= 0 || after.GetLastSnapshotId() != snapID {
		t.Fatalf("inspect after checkpoint: last_pause %v, last_snapshot_id %q", after.GetLastPause().AsDuration(), after.GetLastSnapshotId())
	}
	if st := vmState(t, after); st != "Running" {
		t.Fatalf("original is %q after the checkpoint, want Running", st)
	}

	var clones []*sandboxv1.Sandbox
	for range 2 {
		cid := strings.TrimSpace(d.mustVMM("snapshot", "restore", snapID, "--ttl", "600"))
		clones = append(clones, d.waitState(cid, sandboxv1.SandboxState_SANDBOX_STATE_READY, 15*time.Second))
	}
	seen := map[string]bool{}
	for _, s := range append([]*sandboxv1.Sandbox{after}, clones...) {
		ip := s.GetNetwork().GetIpAddress()
		if seen[ip] {
			t.Fatalf("address %s used twice", ip)
		}
		seen[ip] = true
		if !ping(t, hostNS, ip) {
			t.Fatalf("sandbox %s (%s) does not answer at %s\n%s", s.GetId(), s.GetRestoredFrom(), ip, d.logText())
		}
	}
	for _, c := range clones {
		if c.GetRestoredFrom() != snapID || c.GetNetwork().GetMacAddress() != orig.GetNetwork().GetMacAddress() ||
			c.GetTtl().AsDuration() != 600*time.Second || c.GetProcess().GetVsockSocket() == orig.GetProcess().GetVsockSocket() {
			t.Fatalf("clone = %v", c)
		}
		if _, err := os.Stat(c.GetProcess().GetVsockSocket()); err != nil {
			t.Fatalf("clone's vsock socket: %v", err)
		}
	}
	d.mustVMM("snapshot", "delete", snapID)
	if out := d.mustVMM("snapshot", "list"); strings.Contains(out, snapID) {
		t.Fatalf("deleted snapshot still listed:\n%s", out)
	}
	// Clones do not depend on the catalog once running.
	for _, c := range clones {
		if !ping(t, hostNS, c.GetNetwork().GetIpAddress()) {
			t.Fatal("a clone stopped answering after its snapshot was deleted")
		}
	}
}

func TestRestoreAfterOriginalRemovedAndCheckpointAgain(t *testing.T) {
	d := startDaemon(t, options{})
	id := strings.TrimSpace(d.mustVMM("create", "--wait"))
	snapID := strings.TrimSpace(d.mustVMM("snapshot", "create", id, "--name", "one"))
	d.mustVMM("remove", "--force", id)
	rid := strings.TrimSpace(d.mustVMM("snapshot", "restore", snapID))
	r := d.waitState(rid, sandboxv1.SandboxState_SANDBOX_STATE_READY, 15*time.Second)
	if st := vmState(t, r); st != "Running" {
		t.Fatalf("restored VM is %q", st)
	}
	// Snapshots outlive their sandbox, and a restored sandbox can be
	// checkpointed, stopped and removed like any other.
	snap2 := strings.TrimSpace(d.mustVMM("snapshot", "create", rid, "--name", "two"))
	if out := d.mustVMM("snapshot", "list"); !strings.Contains(out, snapID) || !strings.Contains(out, snap2) {
		t.Fatalf("snapshot list:\n%s", out)
	}
	d.mustVMM("stop", rid)
	d.mustVMM("remove", rid)
	rid2 := strings.TrimSpace(d.mustVMM("snapshot", "restore", snap2))
	d.waitState(rid2, sandboxv1.SandboxState_SANDBOX_STATE_READY, 15*time.Second)
}

func TestDiffCheckpoint(t *testing.T) {
	d := startDaemon(t, options{})
	plain := strings.TrimSpace(d.mustVMM("create", "--wait"))
	if _, errOut, code := d.vmm("snapshot", "create", plain, "--name", "d", "--diff"); code == 0 || !strings.Contains(errOut, "dirty") {
		t.Fatalf("diff without dirty-page tracking: exit %d, %q", code, errOut)
	}
	id := strings.TrimSpace(d.mustVMM("create", "--track-dirty-pages", "--wait"))
	if _, errOut, code := d.vmm("snapshot", "create", id, "--name", "d0", "--diff"); code == 0 || !strings.Contains(errOut, "earlier") {
		t.Fatalf("diff without a base: exit %d, %q", code, errOut)
	}
	base := strings.TrimSpace(d.mustVMM("snapshot", "create", id, "--name", "base"))
	diff := strings.TrimSpace(d.mustVMM("snapshot", "create", id, "--name", "diff1", "--diff"))
	l, err := d.snap.ListSnapshots(t.Context(), &sandboxv1.ListSnapshotsRequest{SandboxId: id})
	if err != nil {
		t.Fatal(err)
	}
	var got *sandboxv1.Snapshot
	for _, s := range l.GetSnapshots() {
		if s.GetId() == diff {
			got = s
		}
	}
	if got == nil || got.GetType() != sandboxv1.SnapshotType_SNAPSHOT_TYPE_DIFF || got.GetParentId() != base {
		t.Fatalf("diff snapshot = %v", got)
	}
	rid := strings.TrimSpace(d.mustVMM("snapshot", "restore", diff))
	d.waitState(rid, sandboxv1.SandboxState_SANDBOX_STATE_READY, 15*time.Second)
}

func TestCheckpointFailuresLeaveSandboxRunning(t *testing.T) {
	tests := []struct {
		name  string
		fault string
		ok    bool // the checkpoint still succeeds (a failed resume is retried)
	}{
		{"pause fails", "fail PATCH /vm#Paused=pause refused", false},
		{"snapshot create fails", "fail PUT /snapshot/create=No space left on device (os error 28)", false},
		{"first resume fails", "fail PATCH /vm#Resumed@1=resume hiccup", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := startDaemon(t, options{emuEnv: []string{"FCEMU_FAULTS=" + tt.fault}})
			id := strings.TrimSpace(d.mustVMM("create", "--wait"))
			_, err := d.snap.Checkpoint(t.Context(), &sandboxv1.CheckpointRequest{SandboxId: id, Name: "x"})
			if tt.ok != (err == nil) {
				t.Fatalf("checkpoint: %v (want success %v)", err, tt.ok)
			}
			sb := d.waitState(id, sandboxv1.SandboxState_SANDBOX_STATE_READY, time.Second)
			if st := vmState(t, sb); st != "Running" {
				t.Fatalf("VM is %q after a failed checkpoint, want Running", st)
			}
			l, _ := d.snap.ListSnapshots(t.Context(), &sandboxv1.ListSnapshotsRequest{})
			if want := map[bool]int{true: 1, false: 0}[tt.ok]; len(l.GetSnapshots()) != want {
				t.Fatalf("%d snapshots listed, want %d", len(l.GetSnapshots()), want)
			}
			if temps := d.snapshotTemps(); len(temps) != 0 {
				t.Fatalf("partial snapshot left: %v", temps)
			}
		})
	}
}

// TestCheckpointOnFullDisk puts the data dir on a small tmpfs (in a
// private mount namespace) so that the disk copy runs out of space.
func TestCheckpointOnFullDisk(t *testing.T) {
	if !testutil.InMountNamespace(t) {
		return
	}
	dir := fullDiskDataDir(t)
	d := startDaemonAt(t, dir, options{})
	id := strings.TrimSpace(d.mustVMM("create", "--wait"))
	_, err := d.snap.Checkpoint(t.Context(), &sandboxv1.CheckpointRequest{SandboxId: id, Name: "big"})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "no space left") {
		t.Fatalf("checkpoint on a full disk: %v, want ResourceExhausted saying no space left", err)
	}
	sb := d.waitState(id, sandboxv1.SandboxState_SANDBOX_STATE_READY, time.Second)
	if st := vmState(t, sb); st != "Running" {
		t.Fatalf("VM is %q after a failed checkpoint", st)
	}
	if temps := d.snapshotTemps(); len(temps) != 0 {
		t.Fatalf("partial snapshot left: %v", temps)
	}
}

func TestSnapshotNames(t *testing.T) {
	d := startDaemon(t, options{})
	id := strings.TrimSpace(d.mustVMM("create", "--wait"))
	for _, name := range []string{"", "../escape", "a/b", ".", "..", ".hidden", "-dash", strings.Repeat("n", 65), "sp ace", "nul\x00"} {
		_, err := d.snap.Checkpoint(t.Context(), &sandboxv1.CheckpointRequest{SandboxId: id, Name: name})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("name %q: %v, want InvalidArgument", name, err)
		}
	}
	if _, err := d.snap.Checkpoint(t.Context(), &sandboxv1.CheckpointRequest{SandboxId: id, Name: "ok-1.2_3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.snap.Checkpoint(t.Context(), &sandboxv1.CheckpointRequest{SandboxId: id, Name: "ok-1.2_3"}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("duplicate name: %v, want AlreadyExists", err)
	}
	if _, err := d.snap.Checkpoint(t.Context(), &sandboxv1.CheckpointRequest{SandboxId: "0000000000zz", Name: "x"}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown sandbox: %v, want NotFound", err)
	}
	if _, err := d.snap.Restore(t.Context(), &sandboxv1.RestoreRequest{SnapshotId: "../../etc"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("restore with a bad id: %v, want InvalidArgument", err)
	}
	if _, err := d.snap.DeleteSnapshot(t.Context(), &sandboxv1.DeleteSnapshotRequest{SnapshotId: "0000000000zz"}); status.Code(err) != codes.NotFound {
		t.Fatalf("delete unknown: %v, want NotFound", err)
	}
	d.mustVMM("stop", id)
	if _, err := d.snap.Checkpoint(t.Context(), &sandboxv1.CheckpointRequest{SandboxId: id, Name: "late"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("checkpoint of a stopped sandbox: %v, want FailedPrecondition", err)
	}
}

func TestConcurrentCheckpointAndStop(t *testing.T) {
	d := startDaemon(t, options{})
	for range 3 {
		id := strings.TrimSpace(d.mustVMM("create", "--wait"))
		var wg sync.WaitGroup
		var ckErr, stopErr error
		wg.Go(func() {
			_, ckErr = d.snap.Checkpoint(t.Context(), &sandboxv1.CheckpointRequest{SandboxId: id, Name: "race"})
		})
		wg.Go(func() {
			_, stopErr = d.sb.Stop(t.Context(), &sandboxv1.StopRequest{Id: id})
		})
		wg.Wait()
		if stopErr != nil {
			t.Fatalf("stop: %v", stopErr)
		}
		if ckErr != nil && status.Code(ckErr) != codes.FailedPrecondition {
			t.Fatalf("checkpoint racing a stop: %v, want success or FailedPrecondition", ckErr)
		}
		d.waitState(id, sandboxv1.SandboxState_SANDBOX_STATE_STOPPED, 5*time.Second)
		if temps := d.snapshotTemps(); len(temps) != 0 {
			t.Fatalf("partial snapshot left: %v", temps)
		}
	}
}

// TestCatalogSurvivesRestartAndRefusesIncompatibleVersions restarts the
// daemon: the catalog is rebuilt from disk, junk is ignored, and a snapshot
// recorded with another data format is refused before anything starts.
func TestCatalogSurvivesRestartAndRefusesIncompatibleVersions(t *testing.T) {
	d := startDaemon(t, options{})
	id := strings.TrimSpace(d.mustVMM("create", "--wait"))
	good := strings.TrimSpace(d.mustVMM("snapshot", "create", id, "--name", "good"))
	bad := strings.TrimSpace(d.mustVMM("snapshot", "create", id, "--name", "future"))
	d.stop()
	metaPath := filepath.Join(d.data, "snapshots", id, bad, "meta.json")
	var meta map[string]any
	raw, err := os.ReadFile(metaPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &meta); err != nil {
		t.Fatal(err)
	}
	meta["snapshot_version"] = "11.0.0"
	raw, _ = json.Marshal(meta)
	if err := os.WriteFile(metaPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(d.data, "snapshots", id, "junk"), 0o700); err != nil {
		t.Fatal(err)
	}
	d.start()
	out := d.mustVMM("snapshot", "list")
	if !strings.Contains(out, good) || !strings.Contains(out, bad) || strings.Contains(out, "junk") {
		t.Fatalf("snapshot list after restart:\n%s", out)
	}
	_, err = d.snap.Restore(t.Context(), &sandboxv1.RestoreRequest{SnapshotId: bad})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "11.0.0") {
		t.Fatalf("restore of an incompatible snapshot: %v, want FailedPrecondition naming the version", err)
	}
	if l, _ := d.sb.List(t.Context(), &sandboxv1.ListRequest{}); len(l.GetSandboxes()) != 0 {
		t.Fatalf("a refused restore created a sandbox: %v", l.GetSandboxes())
	}
	rid := strings.TrimSpace(d.mustVMM("snapshot", "restore", good))
	d.waitState(rid, sandboxv1.SandboxState_SANDBOX_STATE_READY, 15*time.Second)
}
