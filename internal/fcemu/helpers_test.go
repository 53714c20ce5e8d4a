package fcemu_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuf is a goroutine-safe buffer for child output.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// proc is one emulator child process.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	dir    string
	sock   string
	stdout *syncBuf
	stderr *syncBuf
	done   chan struct{}
	err    error
}

type startOpts struct {
	args   []string // extra args after --api-sock
	env    []string
	noSock bool     // do not pass --api-sock and do not wait for it
	dir    string   // reuse a directory
	prefix []string // command prefix (e.g. ip netns exec NS)
	sock   string   // API socket file name in the directory (default api.sock)
}

// start runs the emulator; it is killed and reaped when the test ends.
func start(t *testing.T, o startOpts) *proc {
	t.Helper()
	bin := testutil.Emulator(t)
	dir := o.dir
	if dir == "" {
		dir = testutil.ShortDir(t)
	}
	if o.sock == "" {
		o.sock = "api.sock"
	}
	p := &proc{t: t, dir: dir, sock: filepath.Join(dir, o.sock), stdout: &syncBuf{}, stderr: &syncBuf{}, done: make(chan struct{})}
	var args []string
	if !o.noSock {
		args = append(args, "--api-sock", p.sock)
	}
	args = append(args, o.args...)
	argv := append(append(append([]string{}, o.prefix...), bin), args...)
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Dir = dir
	p.cmd.Env = append(os.Environ(), o.env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start emulator: %v", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	if !o.noSock {
		deadline := time.Now().Add(5 * time.Second)
		for {
			c, err := net.Dial("unix", p.sock)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-p.done:
				t.Fatalf("emulator exited early: %v\nstderr: %s", p.err, p.stderr.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("API socket never became ready: %v", err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return p
}

// wait waits for the process to exit and returns its wait status.
func (p *proc) wait(timeout time.Duration) syscall.WaitStatus {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("emulator did not exit within %v", timeout)
	}
	return p.cmd.ProcessState.Sys().(syscall.WaitStatus)
}

// alive reports whether the process is still running after d.
func (p *proc) alive(d time.Duration) bool {
	select {
	case <-p.done:
		return false
	case <-time.After(d):
		return true
	}
}

func (p *proc) exitCode(timeout time.Duration) int {
	p.t.Helper()
	ws := p.wait(timeout)
	if ws.Signaled() {
		p.t.Fatalf("emulator died by signal %v, want an exit code; stderr: %s", ws.Signal(), p.stderr.String())
	}
	return ws.ExitStatus()
}

// resp is a parsed HTTP response.
type resp struct {
	statusLine string
	status     int
	header     textproto.MIMEHeader
	body       string
}

// fault returns the fault_message of a response (raw body if not JSON).
func (r resp) fault() string {
	const pre = `{"fault_message":"`
	if strings.HasPrefix(r.body, pre) {
		s, err := strconv.Unquote(`"` + strings.TrimSuffix(strings.TrimPrefix(r.body, pre), `"}`) + `"`)
		if err == nil {
			return s
		}
	}
	return r.body
}

// readResp parses one response from br.
func readResp(br *bufio.Reader) (resp, error) {
	tp := textproto.NewReader(br)
	line, err := tp.ReadLine()
	if err != nil {
		return resp{}, fmt.Errorf("status line: %w", err)
	}
	var r resp
	r.statusLine = line
	f := strings.SplitN(line, " ", 3)
	if len(f) < 2 {
		return r, fmt.Errorf("bad status line %q", line)
	}
	r.status, _ = strconv.Atoi(f[1])
	r.header, err = tp.ReadMIMEHeader()
	if err != nil && err != io.EOF {
		return r, fmt.Errorf("headers: %w", err)
	}
	if cl := r.header.Get("Content-Length"); cl != "" {
		n, _ := strconv.Atoi(cl)
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			return r, fmt.Errorf("body: %w", err)
		}
		r.body = string(b)
	}
	return r, nil
}

// raw sends raw bytes on a fresh connection and parses one response.
func (p *proc) raw(req string) resp {
	p.t.Helper()
	c, err := net.Dial("unix", p.sock)
	if err != nil {
		p.t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		p.t.Fatalf("write: %v", err)
	}
	r, err := readResp(bufio.NewReader(c))
	if err != nil {
		p.t.Fatalf("read response to %q: %v", req, err)
	}
	return r
}

// call sends one request with Content-Length when body is not empty.
func (p *proc) call(method, path, body string) resp {
	p.t.Helper()
	req := method + " " + path + " HTTP/1.1\r\nHost: localhost\r\n"
	if body != "" {
		req += "Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n"
	}
	return p.raw(req + "\r\n" + body)
}

// must sends a request and fails the test unless it answers want.
func (p *proc) must(want int, method, path, body string) resp {
	p.t.Helper()
	r := p.call(method, path, body)
	if r.status != want {
		p.t.Fatalf("%s %s %s: status %d, want %d; body %s", method, path, body, r.status, want, r.body)
	}
	return r
}

// expectFault checks a 400 with exactly msg.
func (p *proc) expectFault(method, path, body, msg string) {
	p.t.Helper()
	r := p.call(method, path, body)
	if r.status != 400 || r.fault() != msg {
		p.t.Fatalf("%s %s %s: got %d %q, want 400 %q", method, path, body, r.status, r.fault(), msg)
	}
}

// file creates a file of size bytes in dir and returns its path.
func file(t *testing.T, dir, name string, size int64) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	return path
}

// boot configures a kernel (with boot args) and a root drive and starts the VM.
func (p *proc) boot(bootArgs string) {
	p.t.Helper()
	kernel := file(p.t, p.dir, "vmlinux", 4096)
	rootfs := file(p.t, p.dir, "rootfs.ext4", 1<<20)
	ba := ""
	if bootArgs != "-" {
		ba = fmt.Sprintf(`,"boot_args":%q`, bootArgs)
	}
	p.must(204, "PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q%s}`, kernel, ba))
	p.must(204, "PUT", "/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true,"is_read_only":false}`, rootfs))
	p.must(204, "PUT", "/actions", `{"action_type":"InstanceStart"}`)
}

func (p *proc) state() string {
	p.t.Helper()
	r := p.must(200, "GET", "/", "")
	i := strings.Index(r.body, `"state":"`)
	if i < 0 {
		p.t.Fatalf("no state in %s", r.body)
	}
	s := r.body[i+9:]
	return s[:strings.IndexByte(s, '"')]
}
