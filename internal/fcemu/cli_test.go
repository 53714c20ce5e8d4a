package fcemu_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

func TestCommandLine(t *testing.T) {
	t.Parallel()
	bin := testutil.Emulator(t)
	dir := testutil.ShortDir(t)
	sock := filepath.Join(dir, "s")
	tests := []struct {
		name       string
		args       []string
		env        []string
		code       int
		stdout     string
		stderr     string
		socketMade bool
	}{
		{"version", []string{"--version"}, nil, 0, "Firecracker v1.16.1", "", false},
		{"version short-circuits bad args", []string{"--bogus", "--version"}, nil, 0, "Firecracker v1.16.1", "", false},
		{"help", []string{"--help"}, nil, 0, "--api-sock", "", false},
		{"-h", []string{"-h"}, nil, 0, "Launch a microvm", "", false},
		{"snapshot version", []string{"--snapshot-version"}, nil, 0, "v10.0.0", "", false},
		{"equals form is unknown", []string{"--api-sock=" + sock}, nil, 153, "", "wasn't expected", false},
		{"unknown flag", []string{"--bogus"}, nil, 153, "", "Found argument 'bogus'", false},
		{"duplicate flag", []string{"--no-seccomp", "--no-seccomp"}, nil, 153, "", "provided more than once", false},
		{"missing value", []string{"--api-sock"}, nil, 153, "", "requires a value", false},
		{"value-less before flag", []string{"--id", "--no-seccomp"}, nil, 153, "", "requires a value", false},
		{"no-api without config-file", []string{"--no-api"}, nil, 153, "", "config-file", false},
		{"seccomp flags exclusive", []string{"--seccomp-filter", bin, "--no-seccomp"}, nil, 153, "", "cannot be used together", false},
		{"bad level", []string{"--api-sock", sock + "x", "--level", "loud"}, nil, 152, "", "Invalid value for logger level", false},
		{"missing seccomp filter", []string{"--api-sock", sock + "y", "--seccomp-filter", "/nonexistent"}, nil, 1, "", "No such file or directory", false},
		{"malformed faults", []string{"--api-sock", sock + "z"}, []string{"FCEMU_FAULTS=explode PUT /x"}, 1, "", "FCEMU_FAULTS", false},
		{"stray positional", []string{"value"}, nil, 153, "", "Found argument 'value'", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, tc.args...)
			cmd.Env = append(os.Environ(), tc.env...)
			var out, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr %s", code, tc.code, errb.String())
			}
			if !strings.Contains(out.String(), tc.stdout) || !strings.Contains(errb.String(), tc.stderr) {
				t.Fatalf("stdout %q stderr %q; want %q / %q", out.String(), errb.String(), tc.stdout, tc.stderr)
			}
		})
	}
}

func TestAbortsBySIGABRT(t *testing.T) {
	t.Parallel()
	bin := testutil.Emulator(t)
	dir := testutil.ShortDir(t)
	for _, args := range [][]string{
		{"--id", "bad_id"},
		{"--id", strings.Repeat("a", 65)},
		{"--http-api-max-payload-size", "lots"},
		{"--config-file", filepath.Join(dir, "missing.json"), "--no-api"},
	} {
		cmd := exec.Command(bin, append([]string{"--api-sock", filepath.Join(dir, "s")}, args...)...)
		cmd.Dir = dir // a core dump, if any, lands in the temporary directory
		var errb bytes.Buffer
		cmd.Stderr = &errb
		_ = cmd.Run()
		ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if !ws.Signaled() || ws.Signal() != syscall.SIGABRT {
			t.Errorf("%v: status %v, want death by SIGABRT; stderr %s", args, ws, errb.String())
		}
		if !strings.Contains(errb.String(), "panicked") {
			t.Errorf("%v: no panic message: %s", args, errb.String())
		}
	}
}

func TestDoubleDashIgnoresRest(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{args: []string{"--id", "vm-1", "--", "--bogus", "--id", "x"}})
	if r := p.must(200, "GET", "/", ""); !strings.Contains(r.body, `"id":"vm-1"`) {
		t.Fatalf("GET / = %s", r.body)
	}
}

func TestSocketExistsExit1(t *testing.T) {
	t.Parallel()
	dir := testutil.ShortDir(t)
	file(t, dir, "api.sock", 0)
	p := start(t, startOpts{dir: dir, noSock: true, args: []string{"--api-sock", filepath.Join(dir, "api.sock")}})
	if code := p.exitCode(5 * time.Second); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	want := "Failed to open the API socket at: " + filepath.Join(dir, "api.sock") + ". Check that it is not already used."
	if !strings.Contains(p.stderr.String(), want) {
		t.Fatalf("stderr %q lacks %q", p.stderr.String(), want)
	}
}

func TestSIGTERMKillsWithoutFlushAndLeavesSockets(t *testing.T) {
	t.Parallel()
	dir := testutil.ShortDir(t)
	metrics := filepath.Join(dir, "metrics")
	p := start(t, startOpts{dir: dir, args: []string{"--metrics-path", metrics}})
	vs := filepath.Join(dir, "v.sock")
	p.must(204, "PUT", "/vsock", `{"guest_cid":3,"uds_path":"`+vs+`"}`)
	before, _ := os.ReadFile(metrics)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	ws := p.wait(5 * time.Second)
	if !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("status %v, want death by SIGTERM", ws)
	}
	after, _ := os.ReadFile(metrics)
	if !bytes.Equal(before, after) {
		t.Fatalf("metrics flushed on SIGTERM")
	}
	for _, s := range []string{p.sock, vs} {
		if _, err := os.Lstat(s); err != nil {
			t.Errorf("socket %s removed on exit: %v", s, err)
		}
	}
}

func TestSIGQUITAndSIGINTKillBySignal(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGQUIT, syscall.SIGINT} {
		p := start(t, startOpts{})
		_ = p.cmd.Process.Signal(sig)
		if ws := p.wait(5 * time.Second); !ws.Signaled() || ws.Signal() != sig {
			t.Fatalf("status %v, want death by %v", ws, sig)
		}
	}
}

func TestSIGHUPExits156AndFlushes(t *testing.T) {
	t.Parallel()
	dir := testutil.ShortDir(t)
	metrics := filepath.Join(dir, "metrics")
	logf := filepath.Join(dir, "log")
	p := start(t, startOpts{dir: dir, args: []string{"--metrics-path", metrics, "--log-path", logf}})
	_ = p.cmd.Process.Signal(syscall.SIGPIPE)
	if !p.alive(100 * time.Millisecond) {
		t.Fatal("SIGPIPE killed the emulator")
	}
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	if code := p.exitCode(5 * time.Second); code != 156 {
		t.Fatalf("exit %d, want 156", code)
	}
	b, _ := os.ReadFile(metrics)
	if n := strings.Count(string(b), "\n"); n != 2 {
		t.Fatalf("metrics has %d lines, want 2 (start + SIGHUP flush): %s", n, b)
	}
	l, _ := os.ReadFile(logf)
	if !strings.Contains(string(l), "Shutting down VM after intercepting signal 1") {
		t.Fatalf("log lacks shutdown line: %s", l)
	}
}

func TestDescribeSnapshot(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{})
	p.boot("-")
	p.must(204, "PATCH", "/vm", `{"state":"Paused"}`)
	st := filepath.Join(p.dir, "vm.state")
	p.must(204, "PUT", "/snapshot/create", `{"snapshot_path":"`+st+`","mem_file_path":"`+filepath.Join(p.dir, "mem")+`"}`)
	out, err := exec.Command(testutil.Emulator(t), "--describe-snapshot", st).Output()
	if err != nil || strings.TrimSpace(string(out)) != "v10.0.0" {
		t.Fatalf("describe-snapshot: %q %v", out, err)
	}
}
