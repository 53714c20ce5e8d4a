package fcemu_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/fcemu"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

const (
	guestIP  = "172.16.0.2"
	ipArg    = "ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off:1.1.1.1"
	noAnswer = 400 * time.Millisecond // a live responder answers within ms
	answer   = 3 * time.Second
)

// testNetns is a throwaway named network namespace.
type testNetns struct {
	t    *testing.T
	name string
}

// newTestNetns creates a namespace (deleted when the test ends) with lo up
// and one TAP per name, up; the last TAP gets 172.16.0.1/30.
func newTestNetns(t *testing.T, taps ...string) *testNetns {
	t.Helper()
	testutil.RequiresRoot(t)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	ns := &testNetns{t: t, name: "fcemu-" + hex.EncodeToString(b)}
	if out, err := exec.Command("ip", "netns", "add", ns.name).CombinedOutput(); err != nil {
		t.Skipf("skipping: cannot create a network namespace: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", ns.name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v %s", ns.name, err, out)
		}
	})
	ns.ip("link", "set", "lo", "up")
	for i, tap := range taps {
		ns.ip("tuntap", "add", tap, "mode", "tap")
		if i == len(taps)-1 {
			ns.ip("addr", "add", "172.16.0.1/30", "dev", tap)
		}
		ns.ip("link", "set", tap, "up")
	}
	return ns
}

// ip runs an ip(8) command inside the namespace.
func (ns *testNetns) ip(args ...string) string {
	ns.t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", ns.name}, args...)...).CombinedOutput()
	if err != nil {
		ns.t.Fatalf("ip -n %s %s: %v %s", ns.name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// prefix runs a program inside the namespace.
func (ns *testNetns) prefix() []string { return []string{"ip", "netns", "exec", ns.name} }

// do runs fn on an OS thread that has joined the namespace.
func (ns *testNetns) do(fn func() error) error {
	return testutil.InNetns(filepath.Join("/run/netns", ns.name), fn)
}

// neighMAC returns the lladdr of the guest address's neighbour entry on dev.
func (ns *testNetns) neighMAC(dev string) string {
	ns.t.Helper()
	f := strings.Fields(ns.ip("neigh", "show", guestIP, "dev", dev))
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "lladdr" {
			return f[i+1]
		}
	}
	ns.t.Fatalf("no lladdr for %s on %s: %v", guestIP, dev, f)
	return ""
}

// pinger pings from inside a test namespace.
type pinger struct {
	t *testing.T
	p *testutil.Pinger
}

func newPinger(t *testing.T, ns *testNetns) *pinger {
	t.Helper()
	p, err := testutil.NewPinger(filepath.Join("/run/netns", ns.name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return &pinger{t: t, p: p}
}

// ping sends echo requests until a reply comes or within has passed; late
// replies to earlier calls do not count.
func (p *pinger) ping(addr string, within time.Duration) bool {
	p.t.Helper()
	return p.p.Ping(addr, within)
}

func isLocalUnicast(mac string) bool {
	hw, err := net.ParseMAC(mac)
	return err == nil && len(hw) == 6 && hw[0]&0x01 == 0 && hw[0]&0x02 != 0
}

// TestGuestNetwork boots a guest on a TAP in a throwaway namespace and
// pings it through its life: before boot, running, paused, resumed, after
// snapshot and load in a new process, and loaded elsewhere with
// network_overrides.
func TestGuestNetwork(t *testing.T) {
	nsA := newTestNetns(t, "tap0")
	nsB := newTestNetns(t, "tap1")
	testutil.NoProcessesLeft(t, testutil.Emulator(t))
	pingA, pingB := newPinger(t, nsA), newPinger(t, nsB)
	dir := testutil.ShortDir(t)

	p1 := start(t, startOpts{prefix: nsA.prefix(), dir: dir})
	p1.must(204, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`)
	if pingA.ping(guestIP, noAnswer) {
		t.Fatal("the guest answered before InstanceStart")
	}
	p1.boot("console=ttyS0 reboot=k panic=1 " + ipArg)
	if !pingA.ping(guestIP, answer) {
		t.Fatalf("no answer from the booted guest; stderr: %s", p1.stderr.String())
	}
	mac := nsA.neighMAC("tap0")
	if !isLocalUnicast(mac) {
		t.Fatalf("guest MAC %s is not a locally administered unicast address", mac)
	}

	p1.must(204, "PATCH", "/vm", `{"state":"Paused"}`)
	if pingA.ping(guestIP, noAnswer) {
		t.Fatal("a paused guest answered")
	}
	p1.must(204, "PATCH", "/vm", `{"state":"Resumed"}`)
	if !pingA.ping(guestIP, answer) {
		t.Fatal("no answer after resume")
	}

	// Snapshot, kill, load into a new process on the same TAP.
	p1.must(204, "PATCH", "/vm", `{"state":"Paused"}`)
	st, mem := filepath.Join(dir, "vm.state"), filepath.Join(dir, "vm.mem")
	p1.must(204, "PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, st, mem))
	_ = p1.cmd.Process.Kill()
	p1.wait(5 * time.Second)
	if pingA.ping(guestIP, noAnswer) {
		t.Fatal("the guest answered after its process was killed")
	}

	load := func(p *proc, resume bool, overrides string) {
		t.Helper()
		p.must(204, "PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_path":%q,"backend_type":"File"},"resume_vm":%v%s}`,
			st, mem, resume, overrides))
	}
	p2 := start(t, startOpts{prefix: nsA.prefix(), dir: dir, sock: "api2.sock"})
	load(p2, true, "")
	nsA.ip("neigh", "flush", "dev", "tap0")
	if !pingA.ping(guestIP, answer) {
		t.Fatalf("no answer from the restored guest; stderr: %s", p2.stderr.String())
	}
	if got := nsA.neighMAC("tap0"); got != mac {
		t.Fatalf("restored guest answers ARP with %s, want %s", got, mac)
	}

	// A clone in another namespace on another TAP name, loaded paused.
	p3 := start(t, startOpts{prefix: nsB.prefix(), dir: dir, sock: "api3.sock"})
	load(p3, false, `,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap1"}]`)
	if pingB.ping(guestIP, noAnswer) {
		t.Fatal("a guest loaded paused answered")
	}
	p3.must(204, "PATCH", "/vm", `{"state":"Resumed"}`)
	if !pingB.ping(guestIP, answer) {
		t.Fatalf("no answer from the clone on tap1; stderr: %s", p3.stderr.String())
	}
	if got := nsB.neighMAC("tap1"); got != mac {
		t.Fatalf("clone answers ARP with %s, want %s", got, mac)
	}
	// Both copies keep answering, each in its namespace.
	if !pingA.ping(guestIP, answer) {
		t.Fatal("the first restored guest stopped answering")
	}
}

// TestGuestNetworkDevice checks that ip= configures the NIC its device
// field names (eth1 = the second NIC in API order) with the configured MAC,
// and that a halted guest stops answering.
func TestGuestNetworkDevice(t *testing.T) {
	ns := newTestNetns(t, "tapx", "tap0")
	testutil.NoProcessesLeft(t, testutil.Emulator(t))
	ping := newPinger(t, ns)
	p := start(t, startOpts{prefix: ns.prefix()})
	p.must(204, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tapx","guest_mac":"06:00:ac:10:00:09"}`)
	p.must(204, "PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap0","guest_mac":"06:00:AC:10:00:02"}`)
	p.boot("console=ttyS0 ip=172.16.0.2::172.16.0.1:255.255.255.252::eth1:off")
	if !ping.ping(guestIP, answer) {
		t.Fatalf("no answer on eth1; stderr: %s", p.stderr.String())
	}
	if got := ns.neighMAC("tap0"); got != "06:00:ac:10:00:02" {
		t.Fatalf("guest answers ARP with %s, want the configured 06:00:ac:10:00:02", got)
	}
	if out := p.stdout.String(); strings.Contains(out, "TAP") {
		t.Fatalf("TAP warnings in the log: %s", out)
	}
	// Without reboot=k, Ctrl+Alt+Del halts the guest: it stays silent.
	p.must(204, "PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	if ping.ping(guestIP, noAnswer) {
		t.Fatal("a halted guest answered")
	}
}

// TestResponderStartStop drives the responder in-process (under the race
// detector): it answers while started, stops promptly without closing the
// TAP, restarts, ends with its context, and leaves no goroutine behind.
func TestResponderStartStop(t *testing.T) {
	ns := newTestNetns(t, "tap0")
	ping := newPinger(t, ns)
	var tap *os.File
	if err := ns.do(func() error {
		var err error
		tap, err = fcemu.OpenTAP("tap0")
		return err
	}); err != nil {
		t.Fatalf("open TAP in %s: %v", ns.name, err)
	}
	defer tap.Close()
	mac := net.HardwareAddr{0x06, 0x00, 0xac, 0x10, 0x00, 0x02}
	r := fcemu.NewTestResponder(tap, mac, netip.MustParseAddr(guestIP))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	for i := range 3 {
		r.Start(ctx)
		if !ping.ping(guestIP, answer) {
			t.Fatalf("round %d: no answer", i)
		}
		stopped := make(chan struct{})
		go func() {
			r.Stop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
			t.Fatalf("round %d: Stop did not return", i)
		}
		if ping.ping(guestIP, noAnswer) {
			t.Fatalf("round %d: answered after Stop", i)
		}
	}
	if got := ns.neighMAC("tap0"); got != mac.String() {
		t.Fatalf("neighbour %s, want %s", got, mac)
	}

	// Ending the context stops the loop too; Stop then just reaps it.
	r.Start(ctx)
	if !ping.ping(guestIP, answer) {
		t.Fatal("no answer after restart")
	}
	cancel()
	done := make(chan struct{})
	go func() {
		r.Stop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("the read loop did not end with its context")
	}
	if err := tap.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		t.Fatalf("close TAP: %v", err)
	}
}
