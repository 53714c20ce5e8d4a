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

	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
	"golang.org/x/sys/unix"
)

// startSh starts /bin/sh -c script as our child with console output.
func startSh(t *testing.T, script string) (*Process, string) {
	t.Helper()
	dir := testutil.ShortDir(t)
	console := filepath.Join(dir, "console")
	p, err := startProcess("/bin/sh", []string{"-c", script}, dir, console, "", childEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.Kill()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = p.Wait(ctx)
		_ = p.Close()
	})
	return p, console
}

func waitCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestProcessExitStatus(t *testing.T) {
	tests := []struct {
		name   string
		script string
		signal syscall.Signal
		want   ExitStatus
	}{
		{"exit 0", "exit 0", 0, ExitStatus{Code: 0, Known: true}},
		{"exit 3", "exit 3", 0, ExitStatus{Code: 3, Known: true}},
		{"sigterm", "exec sleep 30", syscall.SIGTERM, ExitStatus{Signal: syscall.SIGTERM, Known: true}},
		{"sigkill", "exec sleep 30", syscall.SIGKILL, ExitStatus{Signal: syscall.SIGKILL, Known: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, _ := startSh(t, tt.script)
			if p.Pid() <= 0 {
				t.Fatalf("pid %d", p.Pid())
			}
			if tt.signal != 0 {
				if err := p.Signal(tt.signal); err != nil {
					t.Fatal(err)
				}
			}
			st, err := p.Wait(waitCtx(t))
			if err != nil {
				t.Fatal(err)
			}
			if st != tt.want {
				t.Errorf("status %+v (%s), want %+v", st, st, tt.want)
			}
			select {
			case <-p.Done():
			default:
				t.Error("Done not closed after Wait")
			}
			if err := p.Signal(syscall.SIGTERM); !errors.Is(err, os.ErrProcessDone) {
				t.Errorf("Signal after exit = %v, want ErrProcessDone", err)
			}
			if err := p.Kill(); err != nil {
				t.Errorf("Kill after exit = %v", err)
			}
			if err := p.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if st2, err := p.Wait(t.Context()); err != nil || st2 != tt.want {
				t.Errorf("Wait after Close = %+v, %v", st2, err)
			}
		})
	}
}

func TestProcessWaitContext(t *testing.T) {
	p, _ := startSh(t, "exec sleep 30")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	if _, err := p.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v, want DeadlineExceeded", err)
	}
}

func TestProcessCloseWhileRunning(t *testing.T) {
	dir := testutil.ShortDir(t)
	p, err := startProcess("/bin/sh", []string{"-c", "exec sleep 30"}, dir, filepath.Join(dir, "c"), "", childEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	pid := p.Pid()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Wait(t.Context()); !errors.Is(err, ErrProcessClosed) {
		t.Errorf("Wait after Close = %v, want ErrProcessClosed", err)
	}
	if err := p.Signal(syscall.SIGKILL); !errors.Is(err, ErrProcessClosed) {
		t.Errorf("Signal after Close = %v, want ErrProcessClosed", err)
	}
	// The process survived Close: clean it up by hand.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("process did not survive Close: %v", err)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
}

func TestAttachNonChild(t *testing.T) {
	// sh starts sleep in the background and exits: sleep is not our child.
	p, console := startSh(t, "sleep 30 </dev/null >/dev/null 2>&1 & echo $!")
	if _, err := p.Wait(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
	out, err := os.ReadFile(console)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("pid %q: %v", out, err)
	}
	a, err := Attach(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.Exited() {
		t.Fatal("attached process already exited")
	}
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	st, err := a.Wait(waitCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.Known {
		t.Errorf("status of a non-child should be unknown, got %+v", st)
	}
}

func TestAttachMissing(t *testing.T) {
	p, _ := startSh(t, "exit 0")
	if _, err := p.Wait(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := Attach(p.Pid()); err == nil {
		t.Fatal("Attach to a reaped pid succeeded")
	}
}

func writeScript(t *testing.T, dir, body string) string {
	t.Helper()
	path := filepath.Join(dir, "fake-firecracker")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// pidGone reports whether pid no longer runs (a zombie that init has not
// reaped yet counts as gone).
func pidGone(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(stat), ')')
	return i > 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				return pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pid in %s", path)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLaunchFailures(t *testing.T) {
	tests := []struct {
		name    string
		script  string
		timeout time.Duration
		cancel  bool
		want    []string
	}{
		{"exits early", `echo "$@"; echo "fatal: boom" >&2; exit 7`, 5 * time.Second, false,
			[]string{"exited before its API socket was ready", "exit status 7", "fatal: boom", "--api-sock"}},
		{"socket never appears", `echo $$ > pid; exec sleep 30`, 300 * time.Millisecond, false, []string{"timeout"}},
		{"context cancelled", `echo $$ > pid; exec sleep 30`, 5 * time.Second, true, []string{"context canceled"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := testutil.ShortDir(t)
			bin := writeScript(t, dir, tt.script)
			sock := filepath.Join(dir, "api.sock")
			if err := os.WriteFile(sock, nil, 0o600); err != nil { // a stale socket file
				t.Fatal(err)
			}
			l := &DirectLauncher{Config: Config{Binary: bin, SocketTimeout: tt.timeout}}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if tt.cancel {
				time.AfterFunc(200*time.Millisecond, cancel)
			}
			start := time.Now()
			_, err := l.Launch(ctx, LaunchRequest{ID: "t-1", Dir: dir, SocketPath: sock, ConsolePath: filepath.Join(dir, "console")})
			if err == nil {
				t.Fatal("Launch succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if d := time.Since(start); d > 4*time.Second {
				t.Errorf("Launch took %v", d)
			}
			if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("API socket left behind: %v", err)
			}
			if _, err := os.Stat(filepath.Join(dir, "pid")); err == nil {
				if pid := readPid(t, filepath.Join(dir, "pid")); !pidGone(pid) {
					t.Errorf("process %d left behind", pid)
				}
			}
		})
	}
}

func TestLaunchInvalid(t *testing.T) {
	dir := testutil.ShortDir(t)
	tests := []struct {
		name string
		l    DirectLauncher
		req  LaunchRequest
		want string
	}{
		{"no binary", DirectLauncher{}, LaunchRequest{ID: "a", Dir: dir, SocketPath: "s", ConsolePath: "c"}, "binary"},
		{"missing binary", DirectLauncher{Config: Config{Binary: filepath.Join(dir, "nope")}},
			LaunchRequest{ID: "a", Dir: dir, SocketPath: "s", ConsolePath: "c"}, "no such file"},
		{"bad id", DirectLauncher{Config: Config{Binary: "/bin/true"}},
			LaunchRequest{ID: "a_b", Dir: dir, SocketPath: "s", ConsolePath: "c"}, "instance id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.l.Launch(t.Context(), tt.req)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestStartInNetns starts a process inside a network namespace the test
// creates and checks that it was born there, while the caller's thread
// stays in its own namespace.
func TestStartInNetns(t *testing.T) {
	testutil.RequiresRoot(t)
	name := fmt.Sprintf("vmmt-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("cannot create a network namespace: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	nsPath := "/run/netns/" + name
	var want unix.Stat_t
	if err := unix.Stat(nsPath, &want); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "ns")
	p, err := startProcess("/bin/sh", []string{"-c", "stat -L -c %i /proc/self/ns/net > " + out}, dir, filepath.Join(dir, "c"), nsPath, childEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if st, err := p.Wait(t.Context()); err != nil || st.Code != 0 {
		t.Fatalf("wait: %v %v", st, err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(got)) != fmt.Sprint(want.Ino) {
		t.Fatalf("child netns inode %s, want %d", got, want.Ino)
	}
	var self unix.Stat_t
	_ = unix.Stat("/proc/thread-self/ns/net", &self)
	if self.Ino == want.Ino {
		t.Fatal("the calling thread was left in the sandbox namespace")
	}
	if _, err := startProcess("/bin/true", nil, dir, filepath.Join(dir, "c"), "/run/netns/does-not-exist", childEnv(nil)); err == nil {
		t.Fatal("start in a missing namespace succeeded")
	}
}
