package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
)

// TestHostileCreateRequests sends requests that must be refused with the
// right code and must change nothing on disk.
func TestHostileCreateRequests(t *testing.T) {
	d := startDaemon(t, options{extra: "[limits]\nmax_memory_mib = 4096\n"})
	images := filepath.Join(d.data, "images")
	outside := filepath.Join(d.dir, "outside.ext4")
	writeFile(t, outside, "secret\n", 0)
	// A symlink inside an allowed dir that points outside must be refused.
	if err := os.Symlink("/etc/shadow", filepath.Join(images, "evil.ext4")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(images, "evil2.ext4")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(images, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	manyLabels := map[string]string{}
	for i := range 100 {
		manyLabels[strings.Repeat("k", 1)+string(rune('a'+i%26))+strings.Repeat("x", i/26)] = "v"
	}
	tests := []struct {
		name string
		req  *sandboxv1.CreateRequest
		code codes.Code
	}{
		{"kernel outside allowed dirs", &sandboxv1.CreateRequest{Kernel: "/etc/passwd"}, codes.PermissionDenied},
		{"rootfs outside allowed dirs", &sandboxv1.CreateRequest{Rootfs: outside}, codes.PermissionDenied},
		{"rootfs traversal", &sandboxv1.CreateRequest{Rootfs: images + "/../../outside.ext4"}, codes.PermissionDenied},
		{"rootfs symlink to /etc/shadow", &sandboxv1.CreateRequest{Rootfs: filepath.Join(images, "evil.ext4")}, codes.PermissionDenied},
		{"rootfs symlink outside", &sandboxv1.CreateRequest{Rootfs: filepath.Join(images, "evil2.ext4")}, codes.PermissionDenied},
		{"relative rootfs", &sandboxv1.CreateRequest{Rootfs: "images/rootfs.ext4"}, codes.InvalidArgument},
		{"missing rootfs", &sandboxv1.CreateRequest{Rootfs: filepath.Join(images, "nope.ext4")}, codes.NotFound},
		{"rootfs is a directory", &sandboxv1.CreateRequest{Rootfs: filepath.Join(images, "adir")}, codes.InvalidArgument},
		{"initrd outside", &sandboxv1.CreateRequest{Initrd: "/etc/hostname"}, codes.PermissionDenied},
		{"vcpus too many", &sandboxv1.CreateRequest{Vcpus: 33}, codes.InvalidArgument},
		{"memory too large", &sandboxv1.CreateRequest{MemoryMib: 1 << 20}, codes.InvalidArgument},
		{"memory too small", &sandboxv1.CreateRequest{MemoryMib: 1}, codes.InvalidArgument},
		{"boot args too long", &sandboxv1.CreateRequest{BootArgs: strings.Repeat("a", 3000)}, codes.InvalidArgument},
		{"boot args with newline", &sandboxv1.CreateRequest{BootArgs: "console=ttyS0\ninit=/bin/sh"}, codes.InvalidArgument},
		{"bad label key", &sandboxv1.CreateRequest{Labels: map[string]string{"bad key!": "v"}}, codes.InvalidArgument},
		{"label value with control chars", &sandboxv1.CreateRequest{Labels: map[string]string{"k": "a\x00b"}}, codes.InvalidArgument},
		{"too many labels", &sandboxv1.CreateRequest{Labels: manyLabels}, codes.InvalidArgument},
		{"negative ttl", &sandboxv1.CreateRequest{Ttl: durationpb.New(-time.Second)}, codes.InvalidArgument},
		{"huge ttl", &sandboxv1.CreateRequest{Ttl: durationpb.New(10000 * time.Hour)}, codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := d.sb.Create(t.Context(), tt.req)
			if status.Code(err) != tt.code {
				t.Fatalf("Create: %v, want %v", err, tt.code)
			}
			if dirs := d.sandboxDirs(); len(dirs) != 0 {
				t.Fatalf("refused request left sandbox dirs: %v", dirs)
			}
			l, err := d.sb.List(t.Context(), &sandboxv1.ListRequest{})
			if err != nil || len(l.GetSandboxes()) != 0 {
				t.Fatalf("refused request registered a sandbox: %v %v", l, err)
			}
		})
	}
}

func TestHostileIDs(t *testing.T) {
	d := startDaemon(t, options{})
	for _, id := range []string{"", "../../etc/passwd", "UPPERCASE123", "0123456789abcdef0", "abc", "01j/bcdefghj", "01jabcdefgh\x00"} {
		t.Run(id, func(t *testing.T) {
			if _, err := d.sb.Inspect(t.Context(), &sandboxv1.InspectRequest{Id: id}); status.Code(err) != codes.InvalidArgument {
				t.Fatalf("Inspect(%q): %v, want InvalidArgument", id, err)
			}
			if _, err := d.sb.Remove(t.Context(), &sandboxv1.RemoveRequest{Id: id, Force: true}); status.Code(err) != codes.InvalidArgument {
				t.Fatalf("Remove(%q): %v, want InvalidArgument", id, err)
			}
			if _, err := d.sb.Stop(t.Context(), &sandboxv1.StopRequest{Id: id}); status.Code(err) != codes.InvalidArgument {
				t.Fatalf("Stop(%q): %v, want InvalidArgument", id, err)
			}
		})
	}
	if _, err := d.sb.Inspect(t.Context(), &sandboxv1.InspectRequest{Id: "0000000000zz"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Inspect(well-formed unknown id): %v, want NotFound", err)
	}
}

func TestSandboxCap(t *testing.T) {
	d := startDaemon(t, options{extra: "[limits]\nmax_sandboxes = 2\n"})
	var ids []string
	for range 2 {
		r, err := d.sb.Create(t.Context(), &sandboxv1.CreateRequest{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.GetSandbox().GetId())
	}
	if _, err := d.sb.Create(t.Context(), &sandboxv1.CreateRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third create: %v, want ResourceExhausted", err)
	}
	if n := len(d.sandboxDirs()); n != 2 {
		t.Fatalf("%d sandbox dirs after a refused create, want 2", n)
	}
	if _, err := d.sb.Remove(t.Context(), &sandboxv1.RemoveRequest{Id: ids[0], Force: true}); err != nil {
		t.Fatal(err)
	}
	r, err := d.sb.Create(t.Context(), &sandboxv1.CreateRequest{})
	if err != nil {
		t.Fatalf("create after a remove: %v", err)
	}
	ids = append(ids[1:], r.GetSandbox().GetId())
	for _, id := range ids {
		d.waitState(id, sandboxv1.SandboxState_SANDBOX_STATE_READY, 10*time.Second)
	}
}
