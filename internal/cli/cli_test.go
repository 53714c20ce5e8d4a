package cli

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// noJargon fails when an error message leaks gRPC wording.
func noJargon(t *testing.T, s string) {
	t.Helper()
	for _, bad := range []string{"rpc error", "code =", "desc =", "Unimplemented", "NotFound", "InvalidArgument"} {
		if strings.Contains(s, bad) {
			t.Errorf("output leaks gRPC jargon %q: %q", bad, s)
		}
	}
}

func TestCreatePrintsOnlyID(t *testing.T) {
	f := startFake(t, nil)
	dir := t.TempDir()
	t.Chdir(dir)
	r := f.vmm(t, "create", "--vcpus", "2", "--memory", "1024",
		"--kernel", "vmlinux", "--rootfs", "/images/root.ext4", "--initrd", "initrd.img",
		"--boot-args", "console=ttyS0 quiet", "--label", "env=dev", "--label", "owner=alice", "--label", "note=a=b,c",
		"--ttl", "300", "--track-dirty-pages")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if r.stdout != "01jd2z9k0001\n" {
		t.Errorf("stdout = %q, want only the id", r.stdout)
	}
	if r.stderr != "" {
		t.Errorf("stderr = %q, want nothing", r.stderr)
	}
	req := f.lastCreate
	if req.GetVcpus() != 2 || req.GetMemoryMib() != 1024 || !req.GetTrackDirtyPages() {
		t.Errorf("request hardware = %v", req)
	}
	if want := filepath.Join(dir, "vmlinux"); req.GetKernel() != want {
		t.Errorf("kernel = %q, want the absolute %q", req.GetKernel(), want)
	}
	if want := filepath.Join(dir, "initrd.img"); req.GetInitrd() != want {
		t.Errorf("initrd = %q, want %q", req.GetInitrd(), want)
	}
	if req.GetRootfs() != "/images/root.ext4" || req.GetBootArgs() != "console=ttyS0 quiet" {
		t.Errorf("rootfs/boot args = %q %q", req.GetRootfs(), req.GetBootArgs())
	}
	wantLabels := map[string]string{"env": "dev", "owner": "alice", "note": "a=b,c"}
	if len(req.GetLabels()) != 3 || req.GetLabels()["env"] != "dev" || req.GetLabels()["note"] != wantLabels["note"] {
		t.Errorf("labels = %v, want %v", req.GetLabels(), wantLabels)
	}
	if req.GetTtl().AsDuration() != 300*time.Second {
		t.Errorf("ttl = %v", req.GetTtl())
	}

	// Defaults: nothing set means zero values (the daemon's defaults).
	r = f.vmm(t, "create")
	if r.code != 0 || r.stdout != "01jd2z9k0002\n" {
		t.Fatalf("create without flags: %+v", r)
	}
	if req := f.lastCreate; req.GetVcpus() != 0 || req.GetKernel() != "" || req.GetTtl() != nil || req.GetLabels() != nil {
		t.Errorf("create without flags sent %v", req)
	}
}

func TestCreateWait(t *testing.T) {
	ready := func(f *fake, id string) {
		// Become ready only once the CLI watches, to exercise the event path.
		if f.waitSubscriber(id) && f.sleep(20*time.Millisecond) {
			f.transition(id, sandboxv1.SandboxState_SANDBOX_STATE_READY, "ready", "")
		}
	}
	tests := []struct {
		name       string
		onCreate   func(f *fake, id string)
		eventsErr  error
		args       []string
		wantCode   int
		wantStderr []string
	}{
		{
			name:     "ready via event",
			onCreate: ready,
			wantCode: 0, wantStderr: []string{"waiting for sandbox 01jd2z9k0001", "sandbox 01jd2z9k0001: ready"},
		},
		{
			name: "already ready before the first look",
			onCreate: func(f *fake, id string) {
				f.transition(id, sandboxv1.SandboxState_SANDBOX_STATE_READY, "ready", "")
			},
			wantCode: 0, wantStderr: []string{"ready"},
		},
		{
			name: "ready by polling when events fail",
			onCreate: func(f *fake, id string) {
				if f.sleep(100 * time.Millisecond) {
					f.transition(id, sandboxv1.SandboxState_SANDBOX_STATE_READY, "ready", "")
				}
			},
			eventsErr: status.Error(codes.Unavailable, "events are off"),
			wantCode:  0, wantStderr: []string{"sandbox 01jd2z9k0001: ready"},
		},
		{
			name: "boot failure",
			onCreate: func(f *fake, id string) {
				if f.waitSubscriber(id) {
					f.transition(id, sandboxv1.SandboxState_SANDBOX_STATE_FAILED, "failed", "kernel panic: VFS unable to mount root fs")
				}
			},
			wantCode: 1, wantStderr: []string{"vmm: sandbox 01jd2z9k0001 failed: kernel panic: VFS unable to mount root fs\n"},
		},
		{
			name: "exits before ready",
			onCreate: func(f *fake, id string) {
				if f.waitSubscriber(id) {
					f.transition(id, sandboxv1.SandboxState_SANDBOX_STATE_STOPPED, "exited", "firecracker exited with status 1")
				}
			},
			wantCode: 1, wantStderr: []string{"will not become ready: firecracker exited with status 1"},
		},
		{
			name: "removed before ready",
			onCreate: func(f *fake, id string) {
				if f.waitSubscriber(id) {
					f.mu.Lock()
					delete(f.sandboxes, id)
					f.publishLocked(&sandboxv1.Event{SandboxId: id, Action: "removed"})
					f.mu.Unlock()
				}
			},
			wantCode: 1, wantStderr: []string{"vmm: sandbox 01jd2z9k0001 was removed before it became ready"},
		},
		{
			name:       "timeout",
			args:       []string{"--timeout", "300ms"},
			wantCode:   1,
			wantStderr: []string{"vmm: sandbox 01jd2z9k0001 did not become ready within 300ms (state: starting)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, func(f *fake) {
				f.onCreate = tt.onCreate
				f.eventsErr = tt.eventsErr
			})
			r := f.vmm(t, append([]string{"create", "--wait"}, tt.args...)...)
			if r.code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr %q", r.code, tt.wantCode, r.stderr)
			}
			if r.stdout != "01jd2z9k0001\n" {
				t.Errorf("stdout = %q, want only the id", r.stdout)
			}
			for _, w := range tt.wantStderr {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr %q lacks %q", r.stderr, w)
				}
			}
			noJargon(t, r.stderr)
		})
	}
}

func TestCreateWaitInterrupted(t *testing.T) {
	f := startFake(t, nil)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan result)
	go func() { done <- runVMM(t, ctx, nil, "--socket", f.sock, "create", "--wait") }()
	subscribed := make(chan bool, 1)
	go func() { subscribed <- f.waitSubscriber("") }()
	select {
	case r := <-done:
		t.Fatalf("create --wait ended before it watched events: %+v", r)
	case <-subscribed:
	}
	cancel()
	r := <-done
	if r.code != 1 || r.stdout != "01jd2z9k0001\n" || !strings.Contains(r.stderr, "interrupted") {
		t.Errorf("got %+v", r)
	}
}

func TestList(t *testing.T) {
	f := startFake(t, nil)
	f.add(fullSandbox("01jd2z9k0002", sandboxv1.SandboxState_SANDBOX_STATE_READY))
	failed := fullSandbox("01jd2z9k0001", sandboxv1.SandboxState_SANDBOX_STATE_FAILED)
	failed.Labels = nil
	failed.ReadyAt = nil
	failed.FailureReason = "boot timed out"
	f.add(failed)

	t.Run("table", func(t *testing.T) {
		r := f.vmm(t, "list")
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
		if len(lines) != 3 {
			t.Fatalf("want header + 2 rows, got %q", r.stdout)
		}
		if got := strings.Fields(lines[0]); !slices.Equal(got, []string{"ID", "STATE", "VCPUS", "MEMORY", "AGE", "LABELS"}) {
			t.Errorf("header = %q", lines[0])
		}
		row1, row2 := strings.Fields(lines[1]), strings.Fields(lines[2])
		if row1[0] != "01jd2z9k0001" || row1[1] != "failed" || row1[5] != "-" {
			t.Errorf("row 1 = %q", lines[1])
		}
		if row2[0] != "01jd2z9k0002" || row2[1] != "ready" || row2[2] != "2" || row2[3] != "1024MiB" || row2[5] != "env=dev,owner=alice" {
			t.Errorf("row 2 = %q", lines[2])
		}
	})

	t.Run("json", func(t *testing.T) {
		r := f.vmm(t, "list", "-o", "json")
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		var raw []map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
			t.Fatalf("not a JSON array: %v\n%s", err, r.stdout)
		}
		if len(raw) != 2 {
			t.Fatalf("want 2 sandboxes, got %d", len(raw))
		}
		for _, k := range []string{"id", "state", "labels", "vcpus", "memory_mib", "kernel", "initrd", "rootfs", "disk",
			"boot_args", "created_at", "ready_at", "ttl_seconds", "expires_at", "failure_reason", "restored_from", "process"} {
			if _, ok := raw[1][k]; !ok {
				t.Errorf("field %q missing from %v", k, raw[1])
			}
		}
		if raw[0]["state"] != "failed" || raw[1]["state"] != "ready" {
			t.Errorf("states = %v, %v; want lower case", raw[0]["state"], raw[1]["state"])
		}
		if _, ok := raw[0]["ready_at"]; ok {
			t.Errorf("unset ready_at present: %v", raw[0])
		}
		if _, ok := raw[1]["stopped_at"]; ok {
			t.Errorf("unset stopped_at present: %v", raw[1])
		}
		if _, ok := raw[0]["labels"].(map[string]any); !ok {
			t.Errorf("labels of an unlabelled sandbox = %#v, want {}", raw[0]["labels"])
		}
		if raw[0]["failure_reason"] != "boot timed out" {
			t.Errorf("failure_reason = %v", raw[0]["failure_reason"])
		}
		if c, err := time.Parse(time.RFC3339, raw[1]["created_at"].(string)); err != nil || !c.Equal(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)) {
			t.Errorf("created_at = %v (%v)", raw[1]["created_at"], err)
		}
		if raw[1]["ttl_seconds"] != float64(300) {
			t.Errorf("ttl_seconds = %v", raw[1]["ttl_seconds"])
		}
		proc := raw[1]["process"].(map[string]any)
		if proc["pid"] != float64(4242) || proc["jailed"] != false || proc["api_socket"] == "" {
			t.Errorf("process = %v", proc)
		}
	})

	t.Run("empty json is an array", func(t *testing.T) {
		r := f.vmm(t, "list", "-o", "json", "--state", "stopping")
		if r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
			t.Errorf("got %+v", r)
		}
	})

	t.Run("filters", func(t *testing.T) {
		r := f.vmm(t, "list", "--state", "ready", "--state", "stopped,failed", "--label", "env=dev", "--label", "owner=alice")
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		want := []sandboxv1.SandboxState{sandboxv1.SandboxState_SANDBOX_STATE_READY, sandboxv1.SandboxState_SANDBOX_STATE_STOPPED, sandboxv1.SandboxState_SANDBOX_STATE_FAILED}
		if !slices.Equal(f.lastList.GetStates(), want) {
			t.Errorf("states sent = %v, want %v", f.lastList.GetStates(), want)
		}
		if l := f.lastList.GetLabels(); len(l) != 2 || l["env"] != "dev" || l["owner"] != "alice" {
			t.Errorf("labels sent = %v", l)
		}
		if n := strings.Count(r.stdout, "\n"); n != 2 {
			t.Errorf("want header + 1 row:\n%s", r.stdout)
		}
	})
}

func TestInspect(t *testing.T) {
	f := startFake(t, nil)
	sb := fullSandbox("01jd2z9k0007", sandboxv1.SandboxState_SANDBOX_STATE_READY)
	sb.Network = &sandboxv1.NetworkInfo{TapDevice: "fc-01jd2z9k0007", MacAddress: "06:00:ac:14:00:02", IpAddress: "172.20.0.2", Gateway: "172.20.0.1", Dns: []string{"1.1.1.1"}}
	f.add(sb)

	t.Run("table", func(t *testing.T) {
		r := f.vmm(t, "inspect", "01jd2z9k0007")
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		for _, want := range []string{"ID:", "01jd2z9k0007", "State:", "ready", "Labels:", "env=dev, owner=alice", "vCPUs:", "Memory:", "1024 MiB",
			"Kernel:", "/var/lib/firecracker-vmm/kernels/vmlinux", "Disk:", "Boot args:", "console=ttyS0 reboot=k", "Created:", "2026-03-01T12:00:00Z",
			"TTL:", "5m0s", "Expires:", "PID:", "4242", "API socket:", "Jailed:", "no", "IP address:", "172.20.0.2", "TAP device:"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("output lacks %q:\n%s", want, r.stdout)
			}
		}
		for line := range strings.Lines(r.stdout) {
			if !strings.Contains(line, ": ") && !strings.HasSuffix(line, ":\n") {
				t.Errorf("line %q is not key: value", line)
			}
		}
	})

	t.Run("json", func(t *testing.T) {
		r := f.vmm(t, "inspect", "01jd2z9k0007", "-o", "json")
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
			t.Fatalf("not a JSON object: %v\n%s", err, r.stdout)
		}
		if v["id"] != "01jd2z9k0007" || v["state"] != "ready" || v["vcpus"] != float64(2) || v["memory_mib"] != float64(1024) {
			t.Errorf("object = %v", v)
		}
		if v["labels"].(map[string]any)["owner"] != "alice" {
			t.Errorf("labels = %v", v["labels"])
		}
		nw, ok := v["network"].(map[string]any)
		if !ok || nw["ip_address"] != "172.20.0.2" || nw["tap_device"] != "fc-01jd2z9k0007" {
			t.Errorf("network = %v", v["network"])
		}
	})

	t.Run("not found", func(t *testing.T) {
		r := f.vmm(t, "inspect", "01jd2z9kzzzz")
		if r.code != 1 || r.stderr != "vmm: sandbox 01jd2z9kzzzz: not found\n" || r.stdout != "" {
			t.Errorf("got %+v", r)
		}
	})
}

func TestStopAndRemove(t *testing.T) {
	f := startFake(t, nil)
	f.add(fullSandbox("01jd2z9k0001", sandboxv1.SandboxState_SANDBOX_STATE_READY))
	f.add(fullSandbox("01jd2z9k0002", sandboxv1.SandboxState_SANDBOX_STATE_READY))

	r := f.vmm(t, "stop", "01jd2z9k0001", "--timeout", "7")
	if r.code != 0 || r.stdout != "01jd2z9k0001\n" {
		t.Fatalf("stop: %+v", r)
	}
	if got := f.lastStop.GetTimeout().AsDuration(); got != 7*time.Second {
		t.Errorf("stop timeout = %v", got)
	}
	r = f.vmm(t, "stop", "01jd2z9k0001")
	if r.code != 0 || f.lastStop.GetTimeout() != nil {
		t.Errorf("stop without --timeout sent %v (%+v)", f.lastStop, r)
	}

	r = f.vmm(t, "remove", "01jd2z9k0002")
	if r.code != 1 || r.stderr != "vmm: sandbox 01jd2z9k0002 is ready: stop it first or use force: failed precondition\n" {
		t.Errorf("remove running: %+v", r)
	}
	for _, args := range [][]string{{"remove", "01jd2z9k0001"}, {"rm", "-f", "01jd2z9k0002"}} {
		r = f.vmm(t, args...)
		if r.code != 0 || r.stdout != args[len(args)-1]+"\n" {
			t.Errorf("%v: %+v", args, r)
		}
	}
	if !f.lastRemove.GetForce() {
		t.Error("rm -f did not send force")
	}
	r = f.vmm(t, "remove", "01jd2z9k0001")
	if r.code != 1 || r.stderr != "vmm: sandbox 01jd2z9k0001: not found\n" {
		t.Errorf("remove twice: %+v", r)
	}
}

func TestDaemonErrorsAreSentences(t *testing.T) {
	f := startFake(t, nil)
	r := f.vmm(t, "create", "--vcpus", "64")
	if r.code != 1 || r.stderr != "vmm: vcpus 64 is out of range 1..32: invalid argument\n" || r.stdout != "" {
		t.Errorf("got %+v", r)
	}
	noJargon(t, r.stderr)
}

func TestSnapshotUnimplemented(t *testing.T) {
	f := startFake(t, nil)
	for _, args := range [][]string{
		{"snapshot", "create", "01jd2z9k0001", "--name", "cp1"},
		{"snapshot", "list"},
		{"snapshot", "restore", "01jd2zb7q8rs", "--ttl", "600"},
		{"snapshot", "delete", "01jd2zb7q8rs"},
	} {
		r := f.vmm(t, args...)
		want := "vmm: snapshots are not implemented yet (checkpoint and restore land with the snapshot issue): not implemented\n"
		if r.code != 1 || r.stderr != want || r.stdout != "" {
			t.Errorf("%v: %+v", args, r)
		}
		noJargon(t, r.stderr)
	}
}

func TestSnapshotCommands(t *testing.T) {
	f := startFake(t, func(f *fake) { f.snapshotsImpl = true })
	r := f.vmm(t, "snapshot", "create", "01jd2z9k0001", "--name", "cp1", "--diff")
	if r.code != 0 || r.stdout != "01jd2zb7q8rs\n" {
		t.Fatalf("create: %+v", r)
	}
	if f.lastCkpt.GetName() != "cp1" || f.lastCkpt.GetType() != sandboxv1.SnapshotType_SNAPSHOT_TYPE_DIFF {
		t.Errorf("checkpoint request = %v", f.lastCkpt)
	}
	f.mu.Lock()
	f.snapshots[0].SizeBytes = 3 << 20
	f.snapshots[0].CreatedAt = timestamppb.Now()
	f.mu.Unlock()

	r = f.vmm(t, "snapshot", "list", "--sandbox-id", "01jd2z9k0001")
	if r.code != 0 || !strings.Contains(r.stdout, "01jd2zb7q8rs") || !strings.Contains(r.stdout, "diff") || !strings.Contains(r.stdout, "3.0MiB") {
		t.Errorf("list table: %+v", r)
	}
	r = f.vmm(t, "snapshot", "list", "-o", "json")
	var snaps []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &snaps); err != nil || len(snaps) != 1 {
		t.Fatalf("list json: %v %+v", err, r)
	}
	if snaps[0]["id"] != "01jd2zb7q8rs" || snaps[0]["sandbox_id"] != "01jd2z9k0001" || snaps[0]["type"] != "diff" || snaps[0]["name"] != "cp1" {
		t.Errorf("snapshot = %v", snaps[0])
	}
	r = f.vmm(t, "snapshot", "list", "--sandbox-id", "01jd2z9k0009", "-o", "json")
	if strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("filtered list = %q", r.stdout)
	}

	r = f.vmm(t, "snapshot", "restore", "01jd2zb7q8rs", "--ttl", "600", "--label", "from=cp1")
	if r.code != 0 || r.stdout != "01jd2zc00001\n" {
		t.Errorf("restore: %+v", r)
	}
	if f.lastRestor.GetTtl().AsDuration() != 600*time.Second || f.lastRestor.GetLabels()["from"] != "cp1" {
		t.Errorf("restore request = %v", f.lastRestor)
	}
	r = f.vmm(t, "snapshot", "delete", "01jd2zb7q8rs")
	if r.code != 0 {
		t.Errorf("delete: %+v", r)
	}
	r = f.vmm(t, "snapshot", "rm", "01jd2zb7q8rs")
	if r.code != 1 || r.stderr != "vmm: snapshot 01jd2zb7q8rs: not found\n" {
		t.Errorf("delete twice: %+v", r)
	}
}

func TestEventsStreamUntilInterrupted(t *testing.T) {
	f := startFake(t, nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stdout, stderr testutil.SyncBuffer
	done := make(chan int)
	go func() {
		done <- Run(ctx, []string{"--socket", f.sock, "events", "--id", "01jd2z9k0001", "--action", "created,ready", "--action", "failed", "--since", "5"},
			&stdout, &stderr, nil)
	}()
	if !f.waitSubscriber("01jd2z9k0001") {
		t.Fatal("no subscriber")
	}
	if req := f.lastEvents; req.GetSince() != 5 || !slices.Equal(req.GetActions(), []string{"created", "ready", "failed"}) {
		t.Errorf("events request = %v", req)
	}
	at := time.Date(2026, 3, 1, 12, 0, 0, 123e6, time.UTC)
	f.publish(&sandboxv1.Event{SandboxId: "01jd2z9k0001", Action: "created", State: sandboxv1.SandboxState_SANDBOX_STATE_STARTING, Time: timestamppb.New(at)})
	f.publish(&sandboxv1.Event{SandboxId: "01jd2z9k0002", Action: "created", State: sandboxv1.SandboxState_SANDBOX_STATE_STARTING})
	f.publish(&sandboxv1.Event{SandboxId: "01jd2z9k0001", Action: "stopping", State: sandboxv1.SandboxState_SANDBOX_STATE_STOPPING})
	f.publish(&sandboxv1.Event{SandboxId: "01jd2z9k0001", Action: "failed", State: sandboxv1.SandboxState_SANDBOX_STATE_FAILED, Time: timestamppb.New(at),
		Attributes: map[string]string{"reason": "boot timed out", "exit_code": "1"}})
	want := "2026-03-01T12:00:00.123Z 1 01jd2z9k0001 created starting\n" +
		"2026-03-01T12:00:00.123Z 4 01jd2z9k0001 failed failed exit_code=1 reason=\"boot timed out\"\n"
	deadline := time.Now().Add(5 * time.Second)
	for stdout.String() != want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel() // what SIGINT does in cmd/vmm
	if code := <-done; code != 0 {
		t.Errorf("exit %d after interrupt, stderr %q", code, stderr.String())
	}
	if stdout.String() != want {
		t.Errorf("stdout = %q, want %q", stdout.String(), want)
	}
	if stderr.String() != "" {
		t.Errorf("stderr = %q", stderr.String())
	}
}

func TestEventsEndWhenDaemonEndsStream(t *testing.T) {
	f := startFake(t, func(f *fake) { f.eventsEndAt = 2 })
	f.onCreate = nil
	done := make(chan result)
	go func() { done <- f.vmm(t, "events") }()
	if !f.waitSubscriber("") {
		t.Fatal("no subscriber")
	}
	f.publish(&sandboxv1.Event{SandboxId: "01jd2z9k0001", Action: "created", State: sandboxv1.SandboxState_SANDBOX_STATE_STARTING})
	f.publish(&sandboxv1.Event{SandboxId: "01jd2z9k0001", Action: "ready", State: sandboxv1.SandboxState_SANDBOX_STATE_READY})
	r := <-done
	if r.code != 0 || strings.Count(r.stdout, "\n") != 2 || !strings.Contains(r.stdout, " 2 01jd2z9k0001 ready ready") {
		t.Errorf("got %+v", r)
	}
}

func TestEventsError(t *testing.T) {
	f := startFake(t, func(f *fake) {
		f.eventsErr = status.Error(codes.ResourceExhausted, "event consumer fell behind; reconnect with since=41")
	})
	r := f.vmm(t, "events")
	if r.code != 1 || r.stderr != "vmm: event consumer fell behind; reconnect with since=41\n" {
		t.Errorf("got %+v", r)
	}
}

func TestNoDaemon(t *testing.T) {
	dir := testutil.ShortDir(t)
	missing := filepath.Join(dir, "missing.sock")
	stale := filepath.Join(dir, "stale.sock")
	// A socket file nobody listens on any more.
	lis, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	lis.Close()

	for _, sock := range []string{missing, stale} {
		for _, args := range [][]string{{"list"}, {"create"}, {"events"}, {"snapshot", "list"}} {
			r := runVMM(t, t.Context(), map[string]string{"VMM_SOCKET": sock}, args...)
			want := "vmm: no daemon is listening on " + sock + " (is vmm-daemon running? set --socket or VMM_SOCKET)\n"
			if r.code != 1 || r.stderr != want || r.stdout != "" {
				t.Errorf("%s %v: got %+v, want stderr %q", filepath.Base(sock), args, r, want)
			}
		}
	}
	// A TCP address nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	r := runVMM(t, t.Context(), nil, "--addr", addr, "list")
	if want := "vmm: no daemon is listening on " + addr + " (is vmm-daemon running with a TCP address? set --addr)\n"; r.code != 1 || r.stderr != want {
		t.Errorf("--addr: got %+v, want %q", r, want)
	}
	// The default socket is named when nothing is set.
	if _, err := os.Stat("/run/firecracker-vmm/vmm.sock"); err != nil {
		r := runVMM(t, t.Context(), nil, "list")
		if r.code != 1 || !strings.Contains(r.stderr, "no daemon is listening on /run/firecracker-vmm/vmm.sock") {
			t.Errorf("default socket: %+v", r)
		}
	}
}

func TestSocketSelection(t *testing.T) {
	f := startFake(t, nil)
	f.add(fullSandbox("01jd2z9k0001", sandboxv1.SandboxState_SANDBOX_STATE_READY))

	r := runVMM(t, t.Context(), map[string]string{"VMM_SOCKET": f.sock}, "list")
	if r.code != 0 || !strings.Contains(r.stdout, "01jd2z9k0001") {
		t.Errorf("VMM_SOCKET not honoured: %+v", r)
	}
	// --socket wins over VMM_SOCKET.
	r = runVMM(t, t.Context(), map[string]string{"VMM_SOCKET": "/nonexistent/vmm.sock"}, "--socket", f.sock, "list")
	if r.code != 0 {
		t.Errorf("--socket did not override VMM_SOCKET: %+v", r)
	}
	// A relative --socket is resolved against the working directory.
	t.Chdir(filepath.Dir(f.sock))
	r = runVMM(t, t.Context(), nil, "--socket", filepath.Base(f.sock), "list")
	if r.code != 0 {
		t.Errorf("relative --socket: %+v", r)
	}
}

func TestUsageErrors(t *testing.T) {
	f := startFake(t, nil)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"list", "--bogus"}, "vmm: unknown flag: --bogus\n"},
		{[]string{"frobnicate"}, `vmm: unknown command "frobnicate" for "vmm"` + "\n"},
		{[]string{"list", "--state", "sleeping"}, `vmm: invalid --state "sleeping": valid states are starting, ready, running, stopping, stopped, failed` + "\n"},
		{[]string{"create", "--label", "env"}, `vmm: invalid --label "env": want key=value` + "\n"},
		{[]string{"list", "--label", "env"}, `vmm: invalid --label "env": want key=value` + "\n"},
		{[]string{"list", "-o", "yaml"}, "want table or json"},
		{[]string{"inspect"}, `vmm: "vmm inspect" needs SANDBOX_ID` + "\n"},
		{[]string{"inspect", "a", "b"}, "takes 1 argument"},
		{[]string{"stop", "--timeout", "soon", "x"}, "want a whole number of seconds"},
		{[]string{"create", "--ttl", "-1"}, "want a whole number of seconds"},
		{[]string{"create", "--wait", "--timeout", "later"}, "want a duration"},
		{[]string{"create", "--vcpus", "two"}, `invalid argument "two"`},
		{[]string{"snapshot", "create", "01jd2z9k0001"}, `vmm: required flag(s) "name" not set` + "\n"},
		{[]string{"snapshot", "restore"}, "needs SNAPSHOT_ID"},
		{[]string{"events", "extra"}, "unknown command"},
		{[]string{"--tls-ca", "/etc/ca.pem", "list"}, "vmm: the TLS flags apply to --addr only\n"},
	}
	for _, tt := range tests {
		r := f.vmm(t, tt.args...)
		if r.code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", tt.args, r.code, r.stderr)
		}
		if !strings.Contains(r.stderr, tt.want) || !strings.Contains(r.stderr, "--help' for usage.") {
			t.Errorf("%v: stderr %q lacks %q", tt.args, r.stderr, tt.want)
		}
		if r.stdout != "" {
			t.Errorf("%v: stdout %q", tt.args, r.stdout)
		}
	}
	if f.lastCreate != nil || f.lastList != nil {
		t.Error("a usage error reached the daemon")
	}
}

func TestHelpVersionCompletion(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{nil, "Available Commands"},
		{[]string{"--help"}, "Available Commands"},
		{[]string{"create", "--help"}, "--track-dirty-pages"},
		{[]string{"snapshot"}, "restore"},
		{[]string{"version"}, "vmm "},
		{[]string{"completion", "bash"}, "__start_vmm"},
		{[]string{"completion", "zsh"}, "#compdef vmm"},
		{[]string{"__complete", "list", "--state", ""}, "ready"},
	} {
		r := runVMM(t, t.Context(), map[string]string{"VMM_SOCKET": "/nonexistent/vmm.sock"}, tt.args...)
		if r.code != 0 || !strings.Contains(r.stdout, tt.want) {
			t.Errorf("%v: exit %d, stdout lacks %q (stderr %q)", tt.args, r.code, tt.want, r.stderr)
		}
	}
}

func TestCompleteSandboxIDs(t *testing.T) {
	f := startFake(t, nil)
	f.add(fullSandbox("01jd2z9k0001", sandboxv1.SandboxState_SANDBOX_STATE_READY))
	f.add(fullSandbox("01jd2z9kaaaa", sandboxv1.SandboxState_SANDBOX_STATE_STOPPED))
	r := f.vmm(t, "__complete", "inspect", "01jd2z9k00")
	if r.code != 0 || !strings.Contains(r.stdout, "01jd2z9k0001\tready") || strings.Contains(r.stdout, "01jd2z9kaaaa") {
		t.Errorf("got %+v", r)
	}
}

func TestParseHelpers(t *testing.T) {
	if _, err := parseStates([]string{"READY", " stopped "}); err != nil {
		t.Errorf("case and spaces: %v", err)
	}
	for _, tt := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"90", 90 * time.Second, true}, {"1.5", 1500 * time.Millisecond, true}, {"2m", 2 * time.Minute, true},
		{"-1", 0, false}, {"-2s", 0, false}, {"x", 0, false},
	} {
		var v durationValue
		err := v.Set(tt.in)
		if (err == nil) != tt.ok || (tt.ok && v.d != tt.want) {
			t.Errorf("duration %q = %v, %v", tt.in, v.d, err)
		}
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		ago  time.Duration
		want string
	}{{5 * time.Second, "5s"}, {3 * time.Minute, "3m"}, {5 * time.Hour, "5h"}, {72 * time.Hour, "3d"}, {-time.Second, "0s"}} {
		if got := humanAge(now.Add(-tt.ago), now); got != tt.want {
			t.Errorf("humanAge(%v) = %q, want %q", tt.ago, got, tt.want)
		}
	}
	if humanAge(time.Time{}, now) != "-" {
		t.Error("zero age")
	}
	for n, want := range map[uint64]string{0: "0B", 1023: "1023B", 1024: "1.0KiB", 3 << 20: "3.0MiB", 5 << 30: "5.0GiB"} {
		if got := humanSize(n); got != want {
			t.Errorf("humanSize(%d) = %q, want %q", n, got, want)
		}
	}
}
