// Package integration drives the real vmm-daemon binary, on a temporary
// socket and data dir, through the generated gRPC client and the real vmm
// CLI, with the Firecracker emulator standing in for Firecracker.
package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// sandboxIDInLog finds sandbox ids in the daemon's log.
var sandboxIDInLog = regexp.MustCompile(`sandbox=([0-9a-z]{12})\b`)

// daemon is one running vmm-daemon with its own data dir and socket.
type daemon struct {
	t      *testing.T
	dir    string
	data   string
	sock   string
	config string
	cmd    *exec.Cmd
	log    *os.File
	waited chan struct{}
	netns  string   // network namespace (path) the daemon runs in; empty: the test's
	env    []string // added to the daemon's environment at each start
	conn   *grpc.ClientConn
	sb     sandboxv1.SandboxServiceClient
	snap   sandboxv1.SandboxSnapshotServiceClient
}

// options tune a daemon for one test.
type options struct {
	// emuEnv is the environment of every emulator process (knobs, faults).
	emuEnv []string
	// extra is appended to the config file.
	extra string
	// onShutdown is [daemon] on_shutdown; empty means "stop", which the
	// cleanup's checks (no process left) rely on.
	onShutdown string
	// defaults replaces the [defaults] section body when set.
	defaults string
	// network is the [network] section body; empty disables networking
	// (a daemon on the machine's own namespace must not build a bridge).
	network string
	// netns runs the daemon inside this network namespace (a path), which
	// plays the host's.
	netns string
}

// startDaemon starts vmm-daemon and waits until it serves. Cleanup stops it
// with SIGTERM, checks it exited 0, and checks that no emulator process is
// left.
func startDaemon(t *testing.T, o options) *daemon {
	t.Helper()
	return startDaemonAt(t, testutil.ShortDir(t), o)
}

// startDaemonAt is startDaemon in a given directory; a kernel and rootfs
// already under dir/data are kept.
func startDaemonAt(t *testing.T, dir string, o options) *daemon {
	t.Helper()
	emu := testutil.Emulator(t)
	testutil.NoProcessesLeft(t, emu)
	d := &daemon{t: t, dir: dir}
	d.data = filepath.Join(d.dir, "data")
	d.sock = filepath.Join(d.dir, "vmm.sock")
	d.config = filepath.Join(d.dir, "config.toml")
	for _, sub := range []string{"kernels", "images"} {
		if err := os.MkdirAll(filepath.Join(d.data, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(d.data, "kernels", "vmlinux")); err != nil {
		writeFile(t, filepath.Join(d.data, "kernels", "vmlinux"), "kernel\n", 0)
	}
	if _, err := os.Stat(filepath.Join(d.data, "images", "rootfs.ext4")); err != nil {
		writeFile(t, filepath.Join(d.data, "images", "rootfs.ext4"), "rootfs\n", 64<<20)
	}

	binary := emu
	if len(o.emuEnv) > 0 {
		binary = filepath.Join(d.dir, "fc-wrapper")
		script := "#!/bin/sh\nexec env"
		for _, kv := range o.emuEnv {
			script += fmt.Sprintf(" %q", kv)
		}
		script += fmt.Sprintf(" %q \"$@\"\n", emu)
		if err := os.WriteFile(binary, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	defaults := o.defaults
	if defaults == "" {
		defaults = fmt.Sprintf("kernel = %q\nrootfs = %q\n",
			filepath.Join(d.data, "kernels", "vmlinux"), filepath.Join(d.data, "images", "rootfs.ext4"))
	}
	netConf := o.network
	if netConf == "" {
		netConf = "enabled = false\n"
	}
	onShutdown := o.onShutdown
	if onShutdown == "" {
		onShutdown = "stop"
	}
	conf := fmt.Sprintf("[firecracker]\nbinary = %q\ndata_dir = %q\nlog_level = \"Info\"\n\n[grpc]\nunix_socket = %q\n\n[daemon]\non_shutdown = %q\n\n[network]\n%s\n[defaults]\n%s\n%s\n",
		binary, d.data, d.sock, onShutdown, netConf, defaults, o.extra)
	d.netns = o.netns
	writeFile(t, d.config, conf, 0)
	d.start()
	t.Cleanup(d.stop)
	return d
}

func (d *daemon) start() {
	t := d.t
	t.Helper()
	var err error
	// Appended to: the log of every start of this daemon stays readable.
	d.log, err = os.OpenFile(filepath.Join(d.dir, "daemon.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if d.netns != "" {
		// nsenter is in util-linux, which every Debian has.
		d.cmd = exec.Command("nsenter", "--net="+d.netns, testutil.Binary(t, "vmm-daemon"), "--config", d.config)
	} else {
		d.cmd = exec.Command(testutil.Binary(t, "vmm-daemon"), "--config", d.config)
	}
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if len(d.env) > 0 {
		d.cmd.Env = append(os.Environ(), d.env...)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.waited = make(chan struct{})
	go func() { _ = d.cmd.Wait(); close(d.waited) }()
	d.conn, err = grpc.NewClient("unix://"+d.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	d.sb = sandboxv1.NewSandboxServiceClient(d.conn)
	d.snap = sandboxv1.NewSandboxSnapshotServiceClient(d.conn)
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		_, err := d.sb.List(ctx, &sandboxv1.ListRequest{})
		cancel()
		if err == nil {
			return
		}
		select {
		case <-d.waited:
			t.Fatalf("vmm-daemon exited during start-up: %v\n%s", d.cmd.ProcessState, d.logText())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("vmm-daemon not serving after 15s: %v\n%s", err, d.logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitKilled waits for the daemon to die by SIGKILL (a crash point) and
// releases its handles; start may then be called again.
func (d *daemon) waitKilled(within time.Duration) {
	t := d.t
	t.Helper()
	select {
	case <-d.waited:
	case <-time.After(within):
		t.Fatalf("vmm-daemon still running %v after the crash point should have been reached\n%s", within, d.logText())
	}
	ws, _ := d.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("vmm-daemon ended with %v, want death by SIGKILL\n%s", d.cmd.ProcessState, d.logText())
	}
	d.cmd = nil
	d.conn.Close()
	d.conn = nil
	d.log.Close()
}

// stop sends SIGTERM and expects a clean exit within 30 s.
func (d *daemon) stop() {
	t := d.t
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
	}
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.waited:
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.waited
		t.Errorf("vmm-daemon did not stop within 30s of SIGTERM\n%s", d.logText())
	}
	if st := d.cmd.ProcessState; st != nil && !st.Success() {
		t.Errorf("vmm-daemon exited with %v\n%s", st, d.logText())
	}
	d.cmd = nil
	d.log.Close()
	// Every sandbox this daemon ever created must have lost its network
	// namespace (vmm-<bridge>.<id>) by now, unless the daemon left its
	// sandboxes running.
	for _, m := range sandboxIDInLog.FindAllStringSubmatch(d.logText(), -1) {
		ns := sandboxNetns(m[1])
		if _, err := os.Stat(ns); err == nil && !d.leaves() {
			t.Errorf("sandbox network namespace %s left behind", ns)
		}
	}
	if _, err := os.Stat(d.sock); err == nil {
		t.Errorf("socket %s left behind after shutdown", d.sock)
	}
}

// leaves reports whether the daemon's config says on_shutdown = "leave".
func (d *daemon) leaves() bool {
	conf, _ := os.ReadFile(d.config)
	return strings.Contains(string(conf), "on_shutdown = \"leave\"")
}

func (d *daemon) logText() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, "daemon.log"))
	return string(b)
}

// vmm runs the CLI against this daemon.
func (d *daemon) vmm(args ...string) (stdout, stderr string, code int) {
	d.t.Helper()
	cmd := exec.Command(testutil.Binary(d.t, "vmm"), args...)
	cmd.Env = append(os.Environ(), "VMM_SOCKET="+d.sock)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code = 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			d.t.Fatalf("vmm %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

// mustVMM runs the CLI and fails the test on a non-zero exit.
func (d *daemon) mustVMM(args ...string) string {
	d.t.Helper()
	out, errOut, code := d.vmm(args...)
	if code != 0 {
		d.t.Fatalf("vmm %s: exit %d\nstdout: %s\nstderr: %s\ndaemon log:\n%s", strings.Join(args, " "), code, out, errOut, d.logText())
	}
	return out
}

// waitState polls Inspect until the sandbox reaches state.
func (d *daemon) waitState(id string, state sandboxv1.SandboxState, within time.Duration) *sandboxv1.Sandbox {
	d.t.Helper()
	deadline := time.Now().Add(within)
	var last *sandboxv1.Sandbox
	for time.Now().Before(deadline) {
		r, err := d.sb.Inspect(d.t.Context(), &sandboxv1.InspectRequest{Id: id})
		if err != nil {
			d.t.Fatalf("inspect %s: %v", id, err)
		}
		last = r.GetSandbox()
		if last.GetState() == state {
			return last
		}
		time.Sleep(10 * time.Millisecond)
	}
	d.t.Fatalf("sandbox %s: state %v after %v, want %v (reason %q)\n%s", id, last.GetState(), within, state, last.GetFailureReason(), d.logText())
	return nil
}

// sandboxDirs lists data/sandboxes.
func (d *daemon) sandboxDirs() []string {
	entries, _ := os.ReadDir(filepath.Join(d.data, "sandboxes"))
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func writeFile(t *testing.T, path, content string, size int64) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if size > 0 {
		if err := os.Truncate(path, size); err != nil {
			t.Fatal(err)
		}
	}
}
