package sandbox

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/events"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

func TestCreateRejectsHostileInput(t *testing.T) {
	outside := t.TempDir() // not an allowed directory
	writeFile(t, filepath.Join(outside, "vmlinux"), 4096)
	rt := &fakeRuntime{}
	e := newTestEnv(t, t.TempDir(), rt, func(c *Config) { c.MaxSandboxes = 100 })
	kdir := filepath.Join(e.dataDir, "kernels")
	idir := filepath.Join(e.dataDir, "images")

	// Files and links inside the allowed directories.
	mustSymlink(t, "/etc/passwd", filepath.Join(kdir, "to-passwd"))
	mustSymlink(t, filepath.Join(outside, "vmlinux"), filepath.Join(kdir, "to-outside"))
	mustSymlink(t, "/", filepath.Join(idir, "up"))
	mustSymlink(t, "loop2", filepath.Join(idir, "loop1"))
	mustSymlink(t, "loop1", filepath.Join(idir, "loop2"))
	if err := os.Mkdir(filepath.Join(idir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(idir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	sock, err := net.Listen("unix", filepath.Join(idir, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()

	manyLabels := map[string]string{}
	for i := range MaxLabels + 1 {
		manyLabels[fmt.Sprintf("k%d", i)] = "v"
	}
	tests := []struct {
		name string
		req  CreateRequest
		want error
	}{
		{"relative kernel", CreateRequest{Kernel: "kernels/vmlinux"}, errdefs.ErrInvalidArgument},
		{"dot-relative rootfs", CreateRequest{Rootfs: "./images/rootfs.ext4"}, errdefs.ErrInvalidArgument},
		{"kernel outside", CreateRequest{Kernel: "/etc/passwd"}, errdefs.ErrPermissionDenied},
		{"kernel dot-dot escape", CreateRequest{Kernel: kdir + "/../../../../etc/passwd"}, errdefs.ErrPermissionDenied},
		{"kernel symlink to /etc/passwd", CreateRequest{Kernel: filepath.Join(kdir, "to-passwd")}, errdefs.ErrPermissionDenied},
		{"kernel symlink outside", CreateRequest{Kernel: filepath.Join(kdir, "to-outside")}, errdefs.ErrPermissionDenied},
		{"rootfs through dir symlink", CreateRequest{Rootfs: filepath.Join(idir, "up", "etc", "passwd")}, errdefs.ErrPermissionDenied},
		{"initrd outside", CreateRequest{Initrd: "/etc/shadow"}, errdefs.ErrPermissionDenied},
		{"missing outside (no existence oracle)", CreateRequest{Kernel: "/nonexistent/vmlinux"}, errdefs.ErrPermissionDenied},
		{"missing kernel", CreateRequest{Kernel: filepath.Join(kdir, "nope")}, errdefs.ErrNotFound},
		{"missing rootfs", CreateRequest{Rootfs: filepath.Join(idir, "nope.ext4")}, errdefs.ErrNotFound},
		{"missing initrd", CreateRequest{Initrd: filepath.Join(kdir, "initrd.img")}, errdefs.ErrNotFound},
		{"rootfs below a file", CreateRequest{Rootfs: filepath.Join(e.rootfs, "x")}, errdefs.ErrNotFound},
		{"symlink loop", CreateRequest{Rootfs: filepath.Join(idir, "loop1")}, errdefs.ErrInvalidArgument},
		{"rootfs is a directory", CreateRequest{Rootfs: filepath.Join(idir, "adir")}, errdefs.ErrInvalidArgument},
		{"rootfs is the allowed dir", CreateRequest{Rootfs: idir}, errdefs.ErrPermissionDenied},
		{"rootfs is a fifo", CreateRequest{Rootfs: filepath.Join(idir, "fifo")}, errdefs.ErrInvalidArgument},
		{"rootfs is a socket", CreateRequest{Rootfs: filepath.Join(idir, "sock")}, errdefs.ErrInvalidArgument},
		{"NUL in path", CreateRequest{Kernel: e.kernel + "\x00/etc/passwd"}, errdefs.ErrInvalidArgument},
		{"vcpus negative", CreateRequest{VCPUs: -1}, errdefs.ErrInvalidArgument},
		{"vcpus 33", CreateRequest{VCPUs: 33}, errdefs.ErrInvalidArgument},
		{"memory too small", CreateRequest{MemoryMiB: 64}, errdefs.ErrInvalidArgument},
		{"memory too large", CreateRequest{MemoryMiB: 1 << 20}, errdefs.ErrInvalidArgument},
		{"memory negative", CreateRequest{MemoryMiB: -512}, errdefs.ErrInvalidArgument},
		{"boot args too long", CreateRequest{BootArgs: strings.Repeat("a", MaxBootArgsLen+1)}, errdefs.ErrInvalidArgument},
		{"boot args newline", CreateRequest{BootArgs: "console=ttyS0\ninit=/bin/sh"}, errdefs.ErrInvalidArgument},
		{"boot args NUL", CreateRequest{BootArgs: "console=ttyS0\x00"}, errdefs.ErrInvalidArgument},
		{"boot args bad UTF-8", CreateRequest{BootArgs: "console=\xff"}, errdefs.ErrInvalidArgument},
		{"label key empty", CreateRequest{Labels: map[string]string{"": "v"}}, errdefs.ErrInvalidArgument},
		{"label key space", CreateRequest{Labels: map[string]string{"a b": "v"}}, errdefs.ErrInvalidArgument},
		{"label key leading dash", CreateRequest{Labels: map[string]string{"-a": "v"}}, errdefs.ErrInvalidArgument},
		{"label key trailing dot", CreateRequest{Labels: map[string]string{"a.": "v"}}, errdefs.ErrInvalidArgument},
		{"label key too long", CreateRequest{Labels: map[string]string{strings.Repeat("a", 64): "v"}}, errdefs.ErrInvalidArgument},
		{"label key unicode", CreateRequest{Labels: map[string]string{"clé": "v"}}, errdefs.ErrInvalidArgument},
		{"label value newline", CreateRequest{Labels: map[string]string{"a": "x\ny"}}, errdefs.ErrInvalidArgument},
		{"label value escape", CreateRequest{Labels: map[string]string{"a": "\x1b[31m"}}, errdefs.ErrInvalidArgument},
		{"label value too long", CreateRequest{Labels: map[string]string{"a": strings.Repeat("x", 256)}}, errdefs.ErrInvalidArgument},
		{"label value bad UTF-8", CreateRequest{Labels: map[string]string{"a": "\xff"}}, errdefs.ErrInvalidArgument},
		{"too many labels", CreateRequest{Labels: manyLabels}, errdefs.ErrInvalidArgument},
		{"ttl negative", CreateRequest{TTL: -time.Second}, errdefs.ErrInvalidArgument},
		{"ttl over 30 days", CreateRequest{TTL: MaxTTL + time.Second}, errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.m.Create(t.Context(), tt.req)
			if !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want class %v", err, tt.want)
			}
			t.Logf("%v", err)
		})
	}
	if dirs := e.sandboxDirs(t); dirs != nil {
		t.Errorf("sandboxes dir changed: %v", dirs)
	}
	if n := len(rt.specs); n != 0 {
		t.Errorf("%d boots started", n)
	}
	if l, _ := e.m.List(t.Context(), ListFilter{}); len(l) != 0 {
		t.Errorf("%d sandboxes registered", len(l))
	}
}

func TestCreateAcceptsEdgeInput(t *testing.T) {
	rt := &fakeRuntime{}
	extra := t.TempDir()
	extraKernel := filepath.Join(extra, "k")
	writeFile(t, extraKernel, 10)
	e := newTestEnv(t, t.TempDir(), rt, func(c *Config) { c.AllowedDirs = []string{extra} })
	kdir := filepath.Join(e.dataDir, "kernels")
	mustSymlink(t, "vmlinux", filepath.Join(kdir, "current"))
	maxLabels := map[string]string{}
	for i := range MaxLabels {
		maxLabels[fmt.Sprintf("k%d", i)] = "v"
	}
	tests := []struct {
		name       string
		req        CreateRequest
		wantKernel string
	}{
		{"defaults", CreateRequest{}, e.kernel},
		{"symlink inside resolves", CreateRequest{Kernel: filepath.Join(kdir, "current")}, e.kernel},
		{"dot-dot staying inside", CreateRequest{Kernel: kdir + "/../kernels/vmlinux"}, e.kernel},
		{"extra allowed dir", CreateRequest{Kernel: extraKernel, Initrd: extraKernel}, extraKernel},
		{"limits", CreateRequest{VCPUs: 32, MemoryMiB: 32768, BootArgs: strings.Repeat("a", MaxBootArgsLen-firecrackerCmdlineReserve),
			TTL: MaxTTL, Labels: maxLabels}, e.kernel},
		{"label forms", CreateRequest{Labels: map[string]string{
			"a": "", "example.com/app-name_1": "héllo wörld", strings.Repeat("k", 63): strings.Repeat("é", 255),
		}}, e.kernel},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := e.m.Create(t.Context(), tt.req)
			if err != nil {
				t.Fatal(err)
			}
			if s.Hardware.Kernel != tt.wantKernel {
				t.Errorf("kernel %q, want resolved %q", s.Hardware.Kernel, tt.wantKernel)
			}
			if err := e.m.Remove(t.Context(), s.ID, true); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestCreateCap(t *testing.T) {
	rt := &fakeRuntime{}
	e := newTestEnv(t, t.TempDir(), rt, func(c *Config) { c.MaxSandboxes = 3 })
	var ids []string
	for range 3 {
		s, err := e.m.Create(t.Context(), CreateRequest{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID)
	}
	before := e.sandboxDirs(t)
	_, err := e.m.Create(t.Context(), CreateRequest{})
	if !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Fatalf("4th create: %v, want ResourceExhausted", err)
	}
	if after := e.sandboxDirs(t); len(after) != len(before) {
		t.Errorf("sandboxes dir changed: %v -> %v", before, after)
	}
	if err := e.m.Remove(t.Context(), ids[0], true); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Create(t.Context(), CreateRequest{}); err != nil {
		t.Fatalf("create after remove: %v", err)
	}
}

func TestNewConfig(t *testing.T) {
	x := events.NewExchange(events.Options{})
	defer x.Close()
	base := func() Config {
		return Config{DataDir: "/var/lib/x", Events: x, Launcher: nopLauncher{&vmm.DirectLauncher{}}, Logger: slog.New(slog.DiscardHandler)}
	}
	tests := []struct {
		name   string
		mutate func(*Config)
		ok     bool
	}{
		{"defaults", func(*Config) {}, true},
		{"relative data dir", func(c *Config) { c.DataDir = "data" }, false},
		{"no data dir", func(c *Config) { c.DataDir = "" }, false},
		{"no events", func(c *Config) { c.Events = nil }, false},
		{"no launcher", func(c *Config) { c.Launcher = nil }, false},
		{"relative allowed dir", func(c *Config) { c.AllowedDirs = []string{"imgs"} }, false},
		{"max vcpus 64", func(c *Config) { c.MaxVCPUs = 64 }, false},
		{"min > max memory", func(c *Config) { c.MinMemoryMiB = 1024; c.MaxMemoryMiB = 512 }, false},
		{"default memory out of limits", func(c *Config) { c.DefaultMemoryMiB = 64 }, false},
		{"default boot args with newline", func(c *Config) { c.DefaultBootArgs = "a\nb" }, false},
		{"negative stop timeout", func(c *Config) { c.StopTimeout = -1 }, false},
		{"negative max sandboxes", func(c *Config) { c.MaxSandboxes = -1 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mutate(&c)
			m, err := New(c)
			if tt.ok != (err == nil) {
				t.Fatalf("New: %v, want ok=%v", err, tt.ok)
			}
			if err != nil {
				if !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Errorf("error class: %v", err)
				}
				return
			}
			want := []string{"/var/lib/x/kernels", "/var/lib/x/images"}
			if got := m.AllowedDirs(); len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
				t.Errorf("allowed dirs %v, want %v", got, want)
			}
			if err := m.Shutdown(t.Context()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}
