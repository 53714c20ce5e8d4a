package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/firecracker"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// orphanVMM is an emulator VMM that is not our child, as one left running
// by a previous daemon is.
type orphanVMM struct {
	id     string
	pid    int
	start  uint64
	dir    string
	socket string
	log    string // "" without --log-path
	// handle watches the process for the test's own checks and kills it
	// at the end.
	handle *Process
}

// startOrphan boots the emulator at exe (from a config file, with dirty
// page tracking) in dir through a shell that exits at once, so that the
// VMM is not our child, and waits for its API socket at dir/socket. With
// withLog it logs to dir/<id>.log. The VMM is killed when the test ends.
func startOrphan(t *testing.T, exe, dir, id, socket string, withLog bool, env ...string) *orphanVMM {
	t.Helper()
	kernel := filepath.Join(dir, "vmlinux")
	touch(t, kernel, 4096)
	cfg := filepath.Join(dir, id+".json")
	doc := fmt.Sprintf(`{"boot-source":{"kernel_image_path":%q},"drives":[],
		"machine-config":{"vcpu_count":1,"mem_size_mib":128,"track_dirty_pages":true}}`, kernel)
	if err := os.WriteFile(cfg, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	o := &orphanVMM{id: id, dir: dir, socket: filepath.Join(dir, socket)}
	args := []string{"--api-sock", o.socket, "--id", id, "--config-file", cfg}
	if withLog {
		o.log = filepath.Join(dir, id+".log")
		args = append(args, "--log-path", o.log)
	}
	script := `console=$1; shift; "$@" </dev/null >>"$console" 2>&1 & echo $!`
	cmd := exec.Command("/bin/sh", append([]string{"-c", script, "sh", filepath.Join(dir, id+".console"), exe}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), append([]string{"FCEMU_SKIP_TAP=1"}, env...)...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if o.pid, err = strconv.Atoi(strings.TrimSpace(string(out))); err != nil {
		t.Fatalf("pid %q: %v", out, err)
	}
	if o.handle, err = Attach(o.pid); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = o.handle.Kill()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = o.handle.Wait(ctx)
		_ = o.handle.Close()
		_ = os.Remove(o.socket)
	})
	c := firecracker.NewClient(o.socket)
	defer c.Close()
	if err := c.WaitReady(testCtx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if o.start, err = ProcessStartTime(o.pid); err != nil {
		t.Fatal(err)
	}
	return o
}

// spec returns the record a daemon would have kept of o.
func (o *orphanVMM) spec() AdoptSpec {
	return AdoptSpec{
		ID: o.id, PID: o.pid, PIDStartTime: o.start, Dir: o.dir,
		APISocket: o.socket, LogPath: o.log, TrackDirtyPages: true,
	}
}

// TestAdoptDirect adopts an emulator VMM that is not our child and checks
// that the VM is fully set up: paths, client, snapshots (Full and, with
// dirty page tracking, Diff) through its path mapper, and the exit status
// its log gives after a clean guest reboot.
func TestAdoptDirect(t *testing.T) {
	l, exe := emulator(t)
	ctx := testCtx(t, 30*time.Second)
	dir := testutil.ShortDir(t)
	o := startOrphan(t, exe, dir, "adopt-1", DefaultAPISocketName, true)
	spec := o.spec()
	spec.APISocket = "" // the launcher's default: Dir/firecracker.sock
	vm, err := Adopt(ctx, l, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill(context.Background())
	if vm.Process.Pid() != o.pid || vm.Process.owned {
		t.Errorf("process %d (owned %v), want the attached pid %d", vm.Process.Pid(), vm.Process.owned, o.pid)
	}
	if vm.SocketPath != o.socket || vm.ConsolePath != filepath.Join(dir, DefaultConsoleName) ||
		vm.LogPath != o.log || vm.Jail != nil || vm.dir != dir {
		t.Errorf("paths: api %s console %s log %s jail %v dir %s", vm.SocketPath, vm.ConsolePath, vm.LogPath, vm.Jail, vm.dir)
	}
	info, err := vm.Describe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != "adopt-1" || info.State != StateRunning || info.VMMVersion == "" {
		t.Errorf("Describe = %+v", info)
	}
	if err := vm.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	for _, s := range []SnapshotSpec{
		{StatePath: filepath.Join(dir, "full.vmstate"), MemPath: filepath.Join(dir, "full.mem")},
		{StatePath: filepath.Join(dir, "diff.vmstate"), MemPath: filepath.Join(dir, "diff.mem"), Diff: true},
	} {
		if err := vm.CreateSnapshot(ctx, s); err != nil {
			t.Fatalf("snapshot %+v: %v", s, err)
		}
		for _, f := range []string{s.StatePath, s.MemPath} {
			if _, err := os.Stat(f); err != nil {
				t.Errorf("snapshot file: %v", err)
			}
		}
	}
	if err := vm.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	assertState(t, vm, StateRunning)

	want := ExitStatus{Code: 0, Known: true, FromLog: true}
	st, err := vm.Shutdown(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if st != want {
		t.Errorf("Shutdown = %s (%+v), want %+v", st, st, want)
	}
	if st, err := vm.Wait(ctx); err != nil || st != want {
		t.Errorf("Wait after the end = %+v, %v; want %+v", st, err, want)
	}
	assertGone(t, vm.SocketPath)
}

// TestAdoptedExitStatus checks what Wait reports for an adopted VMM,
// whose status the kernel does not give us: the code Firecracker logs
// last, or unknown when it logged none.
func TestAdoptedExitStatus(t *testing.T) {
	shutdown := func(ctx context.Context, vm *VM) (ExitStatus, error) { return vm.Shutdown(ctx) }
	tests := []struct {
		name    string
		faults  string
		noLog   bool
		end     func(ctx context.Context, vm *VM) (ExitStatus, error)
		want    ExitStatus
		wantStr string
	}{
		{name: "guest reboot", end: shutdown,
			want: ExitStatus{Code: 0, Known: true, FromLog: true}, wantStr: "exit status 0 (as logged by the VMM)"},
		{name: "exit with an error", faults: "exit PUT /actions#FlushMetrics=3",
			end: func(ctx context.Context, vm *VM) (ExitStatus, error) {
				if err := vm.Client.FlushMetrics(ctx); err == nil {
					t.Error("FlushMetrics succeeded despite the exit fault")
				}
				return vm.Wait(ctx)
			},
			want: ExitStatus{Code: 3, Known: true, FromLog: true}, wantStr: "exit status 3 (as logged by the VMM)"},
		{name: "killed", end: func(ctx context.Context, vm *VM) (ExitStatus, error) { return vm.Kill(ctx) },
			want: ExitStatus{}, wantStr: "exited (status unknown)"},
		{name: "guest reboot without a log file", noLog: true, end: shutdown,
			want: ExitStatus{}, wantStr: "exited (status unknown)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, exe := emulator(t)
			ctx := testCtx(t, 30*time.Second)
			var env []string
			if tt.faults != "" {
				env = append(env, "FCEMU_FAULTS="+tt.faults)
			}
			o := startOrphan(t, exe, testutil.ShortDir(t), "exit-1", DefaultAPISocketName, !tt.noLog, env...)
			vm, err := Adopt(ctx, l, o.spec())
			if err != nil {
				t.Fatal(err)
			}
			defer vm.Kill(context.Background())
			st, err := tt.end(testCtx(t, 5*time.Second), vm)
			if err != nil {
				t.Fatal(err)
			}
			if st != tt.want || st.String() != tt.wantStr {
				t.Errorf("status %q (%+v), want %q (%+v)", st, st, tt.wantStr, tt.want)
			}
			assertGone(t, vm.SocketPath)
		})
	}
}

// TestAdoptRefuses checks each identity check of Adopt: it fails with an
// error naming the check, takes nothing and never harms the process.
func TestAdoptRefuses(t *testing.T) {
	l, exe := emulator(t)
	dir := testutil.ShortDir(t)
	o := startOrphan(t, exe, dir, "adopt-me", DefaultAPISocketName, false)
	other := startOrphan(t, exe, dir, "someone-else", "other.sock", false)
	gone, _ := startSh(t, "exit 0")
	if _, err := gone.Wait(testCtx(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	tests := []struct {
		name    string
		ctx     context.Context
		mutate  func(*AdoptSpec)
		want    string
		wantErr error
	}{
		{name: "no start time", mutate: func(s *AdoptSpec) { s.PIDStartTime = 0 }, want: "pid start time: required"},
		{name: "bad id", mutate: func(s *AdoptSpec) { s.ID = "a_b" }, want: "instance id"},
		{name: "no dir", mutate: func(s *AdoptSpec) { s.Dir = "" }, want: "dir: required"},
		{name: "process gone", mutate: func(s *AdoptSpec) { s.PID = gone.Pid() }, want: "start time", wantErr: errdefs.ErrNotFound},
		{name: "pid reused", mutate: func(s *AdoptSpec) { s.PIDStartTime++ }, want: "was reused", wantErr: ErrIdentityMismatch},
		{name: "another instance's process", mutate: func(s *AdoptSpec) { s.PID, s.PIDStartTime = other.pid, other.start },
			want: "does not carry --id adopt-me", wantErr: ErrIdentityMismatch},
		{name: "socket of another instance", mutate: func(s *AdoptSpec) { s.APISocket = other.socket },
			want: `answers for instance "someone-else"`, wantErr: ErrIdentityMismatch},
		{name: "no socket", mutate: func(s *AdoptSpec) { s.APISocket = filepath.Join(dir, "none.sock") }, want: "API socket"},
		{name: "context ended", ctx: cancelled, want: "context canceled", wantErr: context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := o.spec()
			if tt.mutate != nil {
				tt.mutate(&spec)
			}
			ctx := tt.ctx
			if ctx == nil {
				ctx = testCtx(t, 10*time.Second)
			}
			vm, err := Adopt(ctx, l, spec)
			if err == nil {
				vm.Close()
				t.Fatal("Adopt succeeded")
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q lacks %q", err, tt.want)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v is not %v", err, tt.wantErr)
			}
			for _, v := range []*orphanVMM{o, other} {
				if v.handle.Exited() {
					t.Fatalf("a failed Adopt ended VMM %s", v.id)
				}
			}
		})
	}
	// Nothing was taken: the VMM is still adoptable and answers.
	vm, err := Adopt(testCtx(t, 10*time.Second), l, o.spec())
	if err != nil {
		t.Fatal(err)
	}
	assertState(t, vm, StateRunning)
	if _, err := vm.Kill(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// TestAdoptJailed adopts a jailed VMM that is not our child (the jailer
// ran it in a new PID namespace) after its first handle was closed, as a
// restarted daemon would: the VM gets the jail's path mapper (snapshots
// are written inside the jail, a path outside it is refused), its dirty
// page tracking, the exit code its log gives, and the jail's cleanup once
// it ended.
func TestAdoptJailed(t *testing.T) {
	l := jailerLauncher(t, "1")
	l.Jailer.NewPIDNS = true
	ctx := testCtx(t, 30*time.Second)
	spec := jailSpec(t, "jadopt-1")
	spec.TrackDirtyPages = true
	first, err := Start(ctx, l, spec)
	if err != nil {
		t.Fatal(err)
	}
	j := *first.Jail
	start, err := ProcessStartTime(first.Process.Pid())
	if err != nil {
		t.Fatal(err)
	}
	rec := AdoptSpec{
		ID: spec.ID, PID: first.Process.Pid(), PIDStartTime: start, Dir: spec.Dir,
		APISocket: first.SocketPath, LogPath: first.LogPath, MetricsPath: first.MetricsPath, VsockPath: first.VsockPath,
		TrackDirtyPages: true, Limits: &Limits{VCPUs: spec.VCPUs, MemoryMiB: spec.MemoryMiB},
	}
	if err := first.Close(); err != nil { // the daemon exits, the VMM keeps running
		t.Fatal(err)
	}
	rec.APISocket = "" // the launcher's default: the jail's /run/firecracker.socket
	vm, err := Adopt(ctx, l, rec)
	if err != nil {
		syscall.Kill(rec.PID, syscall.SIGKILL)
		t.Fatal(err)
	}
	defer vm.Kill(context.Background())
	if vm.Jail == nil || vm.Jail.Root != j.Root || len(vm.Jail.Cgroups) != 2 {
		t.Fatalf("jail %+v, want %+v", vm.Jail, j)
	}
	if vm.SocketPath != j.HostPath(JailAPISocket) || vm.LogPath != j.HostPath(JailLogPath) || vm.dir != j.Root {
		t.Errorf("paths: api %s log %s dir %s", vm.SocketPath, vm.LogPath, vm.dir)
	}
	assertState(t, vm, StateRunning)
	if err := vm.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	snap := SnapshotSpec{StatePath: j.HostPath("s.vmstate"), MemPath: j.HostPath("s.mem"), Diff: true}
	if err := vm.CreateSnapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{snap.StatePath, snap.MemPath} {
		var st syscall.Stat_t
		if err := syscall.Stat(f, &st); err != nil || st.Uid != testJailUID {
			t.Errorf("%s: %v (owner %d), want a file Firecracker wrote in the jail", f, err, st.Uid)
		}
	}
	outside := SnapshotSpec{StatePath: filepath.Join(spec.Dir, "x"), MemPath: j.HostPath("y")}
	if err := vm.CreateSnapshot(ctx, outside); err == nil || !strings.Contains(err.Error(), "outside the jail") {
		t.Errorf("snapshot outside the jail: err = %v", err)
	}
	if err := vm.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := vm.Shutdown(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if want := (ExitStatus{Code: 0, Known: true, FromLog: true}); st != want {
		t.Errorf("Shutdown = %s, want %+v", st, want)
	}
	assertGone(t, j.Dir)
	assertGone(t, j.Cgroups...)
}
