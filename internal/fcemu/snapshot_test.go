package fcemu_test

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc64"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// snapSource boots a VM with a drive, a NIC (TAP skipped) and vsock, pauses
// it and writes a snapshot. It returns the vmstate and memory paths.
func snapSource(t *testing.T, kind string) (*proc, string, string) {
	t.Helper()
	p := start(t, startOpts{env: []string{"FCEMU_SKIP_TAP=1"}})
	p.must(204, "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":64}`)
	p.must(204, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:AC:10:00:02"}`)
	p.must(204, "PUT", "/vsock", fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, filepath.Join(p.dir, "v.sock")))
	p.boot("-")
	p.expectFault("PUT", "/snapshot/create", `{"snapshot_path":"s","mem_file_path":"m"}`,
		"Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running")
	p.must(204, "PATCH", "/vm", `{"state":"Paused"}`)
	st, mem := filepath.Join(p.dir, "vm.state"), filepath.Join(p.dir, "vm.mem")
	p.must(204, "PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"snapshot_type":%q}`, st, mem, kind))
	return p, st, mem
}

func TestSnapshotFiles(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"Full", "Diff"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			_, st, mem := snapSource(t, kind)
			b, err := os.ReadFile(st)
			if err != nil {
				t.Fatal(err)
			}
			if binary.LittleEndian.Uint64(b) != 0x0710198486640000 {
				t.Fatalf("magic %#x", binary.LittleEndian.Uint64(b))
			}
			n := binary.LittleEndian.Uint64(b[8:])
			if string(b[16:16+n]) != "10.0.0" {
				t.Fatalf("version %q", b[16:16+n])
			}
			if crc64.Checksum(b[:len(b)-8], crc64.MakeTable(crc64.ECMA)) != binary.LittleEndian.Uint64(b[len(b)-8:]) {
				t.Fatal("CRC64 mismatch")
			}
			var state map[string]any
			if err := json.Unmarshal(b[16+n:len(b)-8], &state); err != nil {
				t.Fatalf("state JSON: %v", err)
			}
			fi, err := os.Stat(mem)
			if err != nil || fi.Size() != 64<<20 {
				t.Fatalf("memory file size %v %v", fi.Size(), err)
			}
			if blocks := fi.Sys().(*syscall.Stat_t).Blocks * 512; blocks > 1<<20 {
				t.Fatalf("memory file not sparse: %d bytes allocated", blocks)
			}
		})
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	t.Parallel()
	src, st, mem := snapSource(t, "Full")
	_ = src.cmd.Process.Kill()
	src.wait(5 * time.Second)
	tests := []struct {
		name    string
		body    string
		state   string
		vsock   string
		tap     string
		prepare func()
	}{
		{"paused with overrides", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q},"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap9"}],"vsock_override":{"uds_path":%q}}`,
			st, mem, filepath.Join(src.dir, "v2.sock")), "Paused", filepath.Join(src.dir, "v2.sock"), "tap9", nil},
		{"resumed at recorded paths", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"resume_vm":true}`, st, mem), "Running",
			filepath.Join(src.dir, "v.sock"), "tap0", func() { os.Remove(filepath.Join(src.dir, "v.sock")) }},
	}
	for i, tc := range tests {
		if tc.prepare != nil {
			tc.prepare()
		}
		p := start(t, startOpts{dir: src.dir, sock: fmt.Sprintf("api%d.sock", i), env: []string{"FCEMU_SKIP_TAP=1"}})
		p.must(204, "PUT", "/logger", `{"level":"Info"}`) // allowed before a load
		p.must(204, "PUT", "/snapshot/load", tc.body)
		if s := p.state(); s != tc.state {
			t.Fatalf("%s: state %q, want %q", tc.name, s, tc.state)
		}
		if _, err := os.Lstat(tc.vsock); err != nil {
			t.Fatalf("%s: vsock not rebound at %s: %v", tc.name, tc.vsock, err)
		}
		cfg := p.must(200, "GET", "/vm/config", "").body
		for _, want := range []string{`"host_dev_name":"` + tc.tap + `"`, `"vcpu_count":2`, `"mem_size_mib":64`, "rootfs.ext4"} {
			if !strings.Contains(cfg, want) {
				t.Fatalf("%s: /vm/config lacks %s: %s", tc.name, want, cfg)
			}
		}
		p.expectFault("PUT", "/snapshot/load", tc.body, "The requested operation is not supported after starting the microVM.")
		if tc.state == "Paused" {
			p.must(204, "PATCH", "/vm", `{"state":"Resumed"}`)
		}
		_ = p.cmd.Process.Kill()
		p.wait(5 * time.Second)
	}
}

func TestSnapshotLoadRefusedAfterBootSpecificPUT(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{})
	// The PUT fails (missing kernel) but still counts as boot-specific.
	r := p.call("PUT", "/boot-source", `{"kernel_image_path":"/nonexistent"}`)
	if r.status != 400 {
		t.Fatalf("boot-source: %d", r.status)
	}
	p.expectFault("PUT", "/snapshot/load", `{"snapshot_path":"/x","mem_file_path":"/y"}`,
		"Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.")
	if !p.alive(100 * time.Millisecond) {
		t.Fatal("refused load was fatal")
	}
	// Parse errors are not fatal either.
	p.expectFault("PUT", "/snapshot/load", `{"snapshot_path":"/x","mem_file_path":"/y","mem_backend":{"backend_type":"File","backend_path":"/y"}}`,
		"An error occurred when deserializing the json body of a request: too many fields: either `mem_backend` or `mem_file_path` exclusively is required.")
	p.expectFault("PUT", "/snapshot/load", `{"snapshot_path":"/x"}`,
		"An error occurred when deserializing the json body of a request: missing field: either `mem_backend` or `mem_file_path` is required.")
	if !p.alive(100 * time.Millisecond) {
		t.Fatal("parse error was fatal")
	}
}

func TestSnapshotLoadFailuresAreFatal(t *testing.T) {
	t.Parallel()
	src, st, mem := snapSource(t, "Full")
	corrupt := filepath.Join(src.dir, "corrupt.state")
	b, _ := os.ReadFile(st)
	b[len(b)/2] ^= 0x01
	_ = os.WriteFile(corrupt, b, 0o600)
	occupied := file(t, src.dir, "occupied.sock", 0)
	tests := []struct{ name, body, want string }{
		{"missing state", fmt.Sprintf(`{"snapshot_path":"/nonexistent","mem_file_path":%q}`, mem), "No such file or directory"},
		{"bad crc", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, corrupt, mem), "CRC64 validation failed"},
		{"unknown iface override", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"network_overrides":[{"iface_id":"nope","host_dev_name":"t"}]}`, st, mem), "Unknown Network Device."},
		{"vsock path occupied", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"vsock_override":{"uds_path":%q}}`, st, mem, occupied), "Address in use (os error 98)"},
		{"recorded vsock path still exists", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, st, mem), "Address in use (os error 98)"},
		{"uffd handler absent", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"Uffd","backend_path":"/nonexistent.sock"}}`, st), "Cannot connect to UDS"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := start(t, startOpts{dir: src.dir, sock: fmt.Sprintf("f%d.sock", i), env: []string{"FCEMU_SKIP_TAP=1"}})
			r := p.call("PUT", "/snapshot/load", tc.body)
			if r.status != 400 || !strings.HasPrefix(r.fault(), "Load snapshot error: ") || !strings.Contains(r.fault(), tc.want) {
				t.Fatalf("got %d %q, want 400 containing %q", r.status, r.fault(), tc.want)
			}
			if code := p.exitCode(5 * time.Second); code != 1 {
				t.Fatalf("exit %d, want 1", code)
			}
		})
	}
}

func TestSnapshotLoadUffd(t *testing.T) {
	t.Parallel()
	src, st, _ := snapSource(t, "Full")
	os.Remove(filepath.Join(src.dir, "v.sock"))
	uds := filepath.Join(src.dir, "uffd.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: uds, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type got struct {
		regions string
		fds     int
		err     error
	}
	ch := make(chan got, 1)
	go func() {
		c, err := ln.AcceptUnix()
		if err != nil {
			ch <- got{err: err}
			return
		}
		defer c.Close()
		buf, oob := make([]byte, 4096), make([]byte, 128)
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		g := got{regions: string(buf[:n]), err: err}
		if msgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil && len(msgs) == 1 {
			fds, _ := syscall.ParseUnixRights(&msgs[0])
			g.fds = len(fds)
			for _, fd := range fds {
				syscall.Close(fd)
			}
		}
		ch <- g
	}()
	p := start(t, startOpts{dir: src.dir, sock: "u.sock", env: []string{"FCEMU_SKIP_TAP=1"}})
	p.must(204, "PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"Uffd","backend_path":%q}}`, st, uds))
	g := <-ch
	if g.err != nil || g.fds != 1 || !strings.Contains(g.regions, `"size":67108864`) || !strings.Contains(g.regions, "base_host_virt_addr") {
		t.Fatalf("uffd handshake: %+v", g)
	}
}
