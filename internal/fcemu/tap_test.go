package fcemu_test

import (
	"crypto/rand"
	"encoding/hex"
	"os/exec"
	"strings"
	"testing"

	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// netns creates a throwaway network namespace with a TAP called tap0 and
// returns the command prefix that runs a program inside it.
func netns(t *testing.T) []string {
	t.Helper()
	testutil.RequiresRoot(t)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "fcemu-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("skipping: cannot create a network namespace: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", name).Run() })
	if out, err := exec.Command("ip", "netns", "exec", name, "ip", "tuntap", "add", "tap0", "mode", "tap").CombinedOutput(); err != nil {
		t.Fatalf("create tap in netns: %v %s", err, out)
	}
	return []string{"ip", "netns", "exec", name}
}

func TestTAP(t *testing.T) {
	prefix := netns(t)
	p := start(t, startOpts{prefix: prefix})
	p.must(204, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`)
	r := p.call("PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tapmissing"}`)
	if r.status != 400 || !strings.HasPrefix(r.fault(), "Network config error: Could not create the network device: Open tap device failed: ") ||
		!strings.Contains(r.fault(), "No such device (os error 19)") {
		t.Fatalf("missing TAP: %d %q", r.status, r.fault())
	}
	// Re-PUT of the same id releases and reopens the TAP.
	p.must(204, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`)

	// A second process cannot attach the TAP held by the first.
	q := start(t, startOpts{prefix: prefix})
	r = q.call("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`)
	if r.status != 400 || !strings.Contains(r.fault(), "Resource busy (os error 16)") {
		t.Fatalf("busy TAP: %d %q", r.status, r.fault())
	}
}

func TestTAPMissingWithoutNetns(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{})
	// The name is checked to exist before TUNSETIFF, so nothing is created
	// in the host namespace even as root.
	r := p.call("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"fcemu-none0"}`)
	if r.status != 400 || !strings.Contains(r.fault(), "Open tap device failed") {
		t.Fatalf("missing TAP: %d %q", r.status, r.fault())
	}
	s := start(t, startOpts{env: []string{"FCEMU_SKIP_TAP=1"}})
	s.must(204, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"fcemu-none0"}`)
}
