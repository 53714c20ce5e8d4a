package fcemu_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

func TestConfigFile(t *testing.T) {
	t.Parallel()
	dir := testutil.ShortDir(t)
	kernel, disk := file(t, dir, "vmlinux", 1), file(t, dir, "disk", 4096)
	cfg := filepath.Join(dir, "vm.json")
	doc := fmt.Sprintf(`{"boot-source":{"kernel_image_path":%q,"boot_args":"console=ttyS0 reboot=k"},
		"drives":[{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true,"is_read_only":false}],
		"machine-config":{"vcpu_count":2,"mem_size_mib":256},"network-interfaces":null,"unknown-top-level":1}`, kernel, disk)
	if err := os.WriteFile(cfg, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	p := start(t, startOpts{dir: dir, args: []string{"--config-file", cfg}})
	if s := p.state(); s != "Running" {
		t.Fatalf("state %q", s)
	}
	p.expectFault("PUT", "/boot-source", `{"kernel_image_path":"/x"}`, "The requested operation is not supported after starting the microVM.")
	if !strings.Contains(p.stdout.String(), "root=/dev/vda rw") {
		t.Fatalf("boot lines: %s", p.stdout.String())
	}

	bad := filepath.Join(dir, "bad.json")
	_ = os.WriteFile(bad, []byte(`{"boot-source":{"kernel_image_path":"/nonexistent"},"drives":[]}`), 0o644)
	q := start(t, startOpts{dir: dir, noSock: true, args: []string{"--no-api", "--config-file", bad}})
	if code := q.exitCode(5 * time.Second); code != 1 {
		t.Fatalf("bad config exit %d, want 1", code)
	}
	if !strings.Contains(q.stderr.String(), "The kernel file cannot be opened") {
		t.Fatalf("stderr %q", q.stderr.String())
	}
}
