package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

func TestMainStartupErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.toml")
	bad := writeConfig(t, "[defaults]\nvcpus = 0\n[grpc]\ntcp_adr = \"x\"\n")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
		env  string // VMM_CRASH_AT
	}{
		{"explicit config missing", []string{"--config", missing}, 1, []string{missing, "does not exist"}, ""},
		{"bad values", []string{"--config", bad}, 1, []string{"defaults.vcpus", `unknown key "grpc.tcp_adr"`}, ""},
		{"tcp without tls", []string{"--config", writeConfig(t, ""), "--tcp-addr", "127.0.0.1:9"}, 1,
			[]string{"grpc.tcp_addr (--tcp-addr)", "never served without authentication"}, ""},
		{"bad log level flag", []string{"--config", writeConfig(t, ""), "--log-level", "loud"}, 1, []string{"daemon.log_level (--log-level)"}, ""},
		{"unknown flag", []string{"--bogus"}, 2, []string{"unknown flag: --bogus"}, ""},
		{"stray argument", []string{"--config", writeConfig(t, ""), "extra"}, 2, []string{`unexpected argument "extra"`}, ""},
		{"unknown crash point", []string{"--config", writeConfig(t, "")}, 1, []string{CrashEnv + `="create.nowhere"`, "create.dir"}, "create.nowhere"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(CrashEnv, tc.env)
			var stdout, stderr bytes.Buffer
			code := Main(t.Context(), tc.args, &stdout, &stderr)
			if code != tc.code {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tc.code, stderr.String())
			}
			msg := stderr.String()
			if strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "vmm-daemon: ") {
				t.Errorf("stderr is not one line: %q", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("stderr lacks %q: %q", w, msg)
				}
			}
		})
	}
}

func TestMainHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := Main(t.Context(), []string{"--help"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit code %d: %s", code, stderr.String())
	}
	for _, flag := range []string{"--config", "--data-dir", "--socket", "--tcp-addr", "--log-level", DefaultConfigPath} {
		if !strings.Contains(stdout.String(), flag) {
			t.Errorf("help lacks %s:\n%s", flag, stdout.String())
		}
	}
}

// TestMainRunsAgainstEmulator starts the real daemon (flags, config file,
// real manager, DirectLauncher) on the Firecracker emulator, drives a
// sandbox through its life over the socket, and shuts down with sandboxes
// still running.
func TestMainRunsAgainstEmulator(t *testing.T) {
	emu := testutil.Emulator(t)
	testutil.NoProcessesLeft(t, emu)
	dir := testutil.ShortDir(t)
	data := filepath.Join(dir, "data")
	for _, sub := range []string{"kernels", "images"} {
		if err := os.MkdirAll(filepath.Join(data, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	touch(t, filepath.Join(data, "kernels"), "vmlinux")
	if err := os.WriteFile(filepath.Join(data, "images", "ubuntu-22.04.ext4"), bytes.Repeat([]byte{1}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "vmm.sock")
	conf := writeConfig(t, fmt.Sprintf("[firecracker]\nbinary = %q\n[network]\nenabled = false\n[daemon]\nlog_level = \"debug\"\nshutdown_timeout_secs = 10\non_shutdown = \"stop\"\n", emu))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr testutil.SyncBuffer
	exit := make(chan int, 1)
	go func() {
		exit <- Main(ctx, []string{"--config", conf, "--data-dir", data, "--socket", sock}, io.Discard, &stderr)
	}()

	conn := dialUnix(t, sock)
	deadline := time.Now().Add(15 * time.Second)
	for {
		cctx, ccancel := context.WithTimeout(t.Context(), time.Second)
		err := healthCheck(cctx, conn)
		ccancel()
		if err == nil {
			break
		}
		select {
		case code := <-exit:
			t.Fatalf("daemon exited with %d:\n%s", code, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon not serving: %v\n%s", err, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket %v %v", fi, err)
	}

	rctx, rcancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer rcancel()
	client := sandboxv1.NewSandboxServiceClient(conn)
	evs, err := client.Events(rctx, &sandboxv1.EventsRequest{Actions: []string{"ready", "failed"}})
	if err != nil {
		t.Fatal(err)
	}
	created, err := client.Create(rctx, &sandboxv1.CreateRequest{Labels: map[string]string{"test": "daemon"}})
	if err != nil {
		t.Fatalf("Create: %v\n%s", err, stderr.String())
	}
	id := created.GetSandbox().GetId()
	if created.GetSandbox().GetState() != sandboxv1.SandboxState_SANDBOX_STATE_STARTING {
		t.Errorf("created in %v", created.GetSandbox().GetState())
	}
	waitEvent(t, evs, id, "ready", &stderr)
	in, err := client.Inspect(rctx, &sandboxv1.InspectRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	sb := in.GetSandbox()
	if sb.GetState() != sandboxv1.SandboxState_SANDBOX_STATE_READY || sb.GetProcess().GetPid() == 0 ||
		sb.GetHardware().GetVcpus() != 1 || sb.GetHardware().GetMemoryMib() != 512 ||
		!strings.HasPrefix(sb.GetHardware().GetDisk(), filepath.Join(data, "sandboxes", id)) {
		t.Errorf("inspect: %v", sb)
	}
	ls, err := client.List(rctx, &sandboxv1.ListRequest{Labels: map[string]string{"test": "daemon"}})
	if err != nil || len(ls.GetSandboxes()) != 1 {
		t.Errorf("List: %v, %v", ls, err)
	}
	st, err := client.Stop(rctx, &sandboxv1.StopRequest{Id: id, Timeout: durationpb.New(5 * time.Second)})
	if err != nil || st.GetSandbox().GetState() != sandboxv1.SandboxState_SANDBOX_STATE_STOPPED {
		t.Fatalf("Stop: %v, %v", st, err)
	}
	if _, err := client.Remove(rctx, &sandboxv1.RemoveRequest{Id: id}); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if _, err := client.Inspect(rctx, &sandboxv1.InspectRequest{Id: id}); status.Code(err) != codes.NotFound {
		t.Errorf("Inspect after remove: %v", err)
	}
	// A sandbox left running is stopped by the shutdown.
	second, err := client.Create(rctx, &sandboxv1.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	waitEvent(t, evs, second.GetSandbox().GetId(), "ready", &stderr)

	cancel()
	select {
	case code := <-exit:
		if code != 0 {
			t.Errorf("exit code %d:\n%s", code, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("daemon did not exit:\n%s", stderr.String())
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
	if pids := testutil.ProcessesOf(emu); len(pids) > 0 {
		t.Errorf("emulator processes still running after shutdown: %v", pids)
	}
	logs := stderr.String()
	for _, want := range []string{"Firecracker v1.16.1", "vmm-daemon ready", "shutting down"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q", want)
		}
	}
}

// waitEvent reads the stream until the event (id, action) or a failure.
func waitEvent(t *testing.T, s grpc.ServerStreamingClient[sandboxv1.Event], id, action string, logs *testutil.SyncBuffer) {
	t.Helper()
	for {
		ev, err := s.Recv()
		if err != nil {
			t.Fatalf("waiting for %s of %s: %v\n%s", action, id, err, logs.String())
		}
		if ev.GetSandboxId() != id {
			continue
		}
		if ev.GetAction() == action {
			return
		}
		if ev.GetAction() == "failed" {
			t.Fatalf("sandbox %s failed: %v\n%s", id, ev.GetAttributes(), logs.String())
		}
	}
}
