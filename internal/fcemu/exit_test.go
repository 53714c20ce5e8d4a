package fcemu_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestExitLogLine checks the last line the emulator logs as it exits, as
// Firecracker's main() does, and that a SIGHUP exit (a signal handler's
// _exit in Firecracker) logs none.
func TestExitLogLine(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		env   []string
		noAPI bool // --no-api --config-file with a kernel that does not exist
		act   func(p *proc)
		code  int
		want  string // suffix of the log's last line; "" means no exit line at all
	}{
		{name: "guest reset", act: func(p *proc) {
			p.boot("-")
			p.must(204, "PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
		}, code: 0, want: "[exit-1:main] Firecracker exiting successfully. exit_code=0"},
		{name: "injected exit", env: []string{"FCEMU_FAULTS=exit-after-boot 20=3"}, act: func(p *proc) {
			p.boot("-")
		}, code: 3, want: "[exit-1:main] Firecracker exiting with error. exit_code=3"},
		{name: "failed snapshot load", act: func(p *proc) {
			p.call("PUT", "/snapshot/load", `{"snapshot_path":"missing","mem_backend":{"backend_type":"File","backend_path":"missing.mem"}}`)
		}, code: 1, want: "[exit-1:main] Firecracker exiting with error. exit_code=1"},
		{name: "failed config file", noAPI: true, code: 1, want: "[exit-1:main] Firecracker exiting with error. exit_code=1"},
		{name: "SIGHUP", act: func(p *proc) { _ = p.cmd.Process.Signal(syscall.SIGHUP) }, code: 156},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			logf := filepath.Join(dir, "fc.log")
			o := startOpts{dir: dir, env: tt.env, args: []string{"--id", "exit-1", "--log-path", logf}}
			if tt.noAPI {
				cfg := filepath.Join(dir, "vm.json")
				if err := os.WriteFile(cfg, []byte(`{"boot-source":{"kernel_image_path":"/nonexistent"},"drives":[]}`), 0o600); err != nil {
					t.Fatal(err)
				}
				o.noSock = true
				o.args = append(o.args, "--no-api", "--config-file", cfg)
			}
			p := start(t, o)
			if tt.act != nil {
				tt.act(p)
			}
			if code := p.exitCode(5 * time.Second); code != tt.code {
				t.Fatalf("exit code %d, want %d; stderr: %s", code, tt.code, p.stderr.String())
			}
			b, err := os.ReadFile(logf)
			if err != nil {
				t.Fatal(err)
			}
			log := strings.TrimRight(string(b), "\n")
			last := log[strings.LastIndexByte(log, '\n')+1:]
			if tt.want == "" {
				if strings.Contains(log, "Firecracker exiting") {
					t.Fatalf("log has an exit line:\n%s", log)
				}
				return
			}
			if !strings.HasSuffix(last, tt.want) {
				t.Fatalf("last log line %q, want one ending in %q; log:\n%s", last, tt.want, log)
			}
			if n := strings.Count(log, "Firecracker exiting"); n != 1 {
				t.Fatalf("%d exit lines, want 1:\n%s", n, log)
			}
		})
	}
}
