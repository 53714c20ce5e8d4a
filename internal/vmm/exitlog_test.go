package vmm

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestParseExitLine(t *testing.T) {
	tests := []struct {
		name   string
		line   string
		code   int
		wantOK bool
	}{
		{"success", "2026-07-01T10:00:00.123456789 [vm-1:main] Firecracker exiting successfully. exit_code=0", 0, true},
		{"error", "2026-07-01T10:00:00.123456789 [vm-1:main] Firecracker exiting with error. exit_code=1", 1, true},
		{"level and origin", "2026-07-01T10:00:00.1 [vm-1:main:ERROR:src/firecracker/src/main.rs:92] Firecracker exiting with error. exit_code=148", 148, true},
		{"carriage return", "t [vm-1:main] Firecracker exiting successfully. exit_code=0\r", 0, true},
		{"another instance", "t [vm-2:main] Firecracker exiting successfully. exit_code=0", 0, false},
		{"id prefix only", "t [vm-1x:main] Firecracker exiting successfully. exit_code=0", 0, false},
		{"other message", "t [vm-1:main] Vmm is stopping.", 0, false},
		{"error code 0", "t [vm-1:main] Firecracker exiting with error. exit_code=0", 0, false},
		{"code out of range", "t [vm-1:main] Firecracker exiting with error. exit_code=300", 0, false},
		{"not a number", "t [vm-1:main] Firecracker exiting with error. exit_code=x", 0, false},
		{"trailing text", "t [vm-1:main] Firecracker exiting successfully. exit_code=0 now", 0, false},
		{"no prefix", "Firecracker exiting successfully. exit_code=0", 0, false},
		{"empty", "", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, ok := parseExitLine(tt.line, "vm-1")
			if ok != tt.wantOK || code != tt.code {
				t.Fatalf("parseExitLine = %d, %v; want %d, %v", code, ok, tt.code, tt.wantOK)
			}
		})
	}
}

func TestExitCodeFromLog(t *testing.T) {
	const (
		ok   = "2026-07-01T10:00:00.000000001 [vm-1:main] Firecracker exiting successfully. exit_code=0\n"
		bad3 = "2026-07-01T10:00:00.000000002 [vm-1:main] Firecracker exiting with error. exit_code=3\n"
		info = "2026-07-01T10:00:00.000000000 [vm-1:fc_api] The API server received a PUT request on \"/actions\".\n"
	)
	filler := strings.Repeat(info, exitLogTailBytes/len(info)+1) // more than the tail
	tests := []struct {
		name   string
		log    string // "" with fifo/missing
		fifo   bool
		none   bool // no file at all
		code   int
		wantOK bool
	}{
		{name: "last line", log: info + info + ok, code: 0, wantOK: true},
		{name: "error code", log: info + bad3, code: 3, wantOK: true},
		{name: "lines after it", log: info + bad3 + info, code: 3, wantOK: true},
		{name: "the last of two", log: ok + info + bad3, code: 3, wantOK: true},
		{name: "after a long log", log: filler + ok, code: 0, wantOK: true},
		{name: "beyond the tail", log: ok + filler, wantOK: false},
		{name: "no newline at the end", log: info + strings.TrimSuffix(ok, "\n"), code: 0, wantOK: true},
		// The tail begins inside the line: it is not taken for a whole one.
		{name: "cut off at the tail's start", log: strings.Repeat("T", exitLogTailBytes) + ok[strings.Index(ok, " ["):], wantOK: false},
		{name: "another instance", log: strings.ReplaceAll(ok, "vm-1", "vm-2"), wantOK: false},
		{name: "no exit line", log: info, wantOK: false},
		{name: "empty", log: "", wantOK: false},
		{name: "fifo", fifo: true, wantOK: false},
		{name: "missing", none: true, wantOK: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "fc.log")
			switch {
			case tt.fifo:
				if err := syscall.Mkfifo(path, 0o600); err != nil {
					t.Fatal(err)
				}
			case !tt.none:
				if err := os.WriteFile(path, []byte(tt.log), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			code, ok := exitCodeFromLog(path, "vm-1")
			if ok != tt.wantOK || code != tt.code {
				t.Fatalf("exitCodeFromLog = %d, %v; want %d, %v", code, ok, tt.code, tt.wantOK)
			}
		})
	}
}

func TestExitStatusString(t *testing.T) {
	tests := []struct {
		st   ExitStatus
		want string
	}{
		{ExitStatus{}, "exited (status unknown)"},
		{ExitStatus{Code: 0, Known: true}, "exit status 0"},
		{ExitStatus{Code: 3, Known: true}, "exit status 3"},
		{ExitStatus{Signal: syscall.SIGKILL, Known: true}, "killed by signal 9 (killed)"},
		{ExitStatus{Code: 0, Known: true, FromLog: true}, "exit status 0 (as logged by the VMM)"},
		{ExitStatus{Code: 1, Known: true, FromLog: true}, "exit status 1 (as logged by the VMM)"},
	}
	for _, tt := range tests {
		if got := tt.st.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.st, got, tt.want)
		}
	}
}

func TestTruncateLog(t *testing.T) {
	dir := t.TempDir()
	regular, fifo := filepath.Join(dir, "fc.log"), filepath.Join(dir, "fifo")
	if err := os.WriteFile(regular, []byte("t [a:main] Firecracker exiting successfully. exit_code=0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path string
		wantSize   int64 // -1: must not exist
	}{
		{"regular file", regular, 0},
		{"fifo", fifo, 0},
		{"missing", filepath.Join(dir, "missing"), -1},
		{"no log", "", -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := truncateLog(tt.path); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Lstat(tt.path)
			if tt.wantSize < 0 {
				if err == nil {
					t.Fatalf("%s was created", tt.path)
				}
				return
			}
			if err != nil || fi.Size() != tt.wantSize {
				t.Fatalf("after truncateLog: %v, %v", fi, err)
			}
		})
	}
	if fi, _ := os.Lstat(fifo); fi.Mode()&os.ModeNamedPipe == 0 {
		t.Error("the FIFO was replaced")
	}
}
