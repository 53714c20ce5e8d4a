package integration

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
	"github.com/google/nftables"
)

var hostNSSeq atomic.Int64

// hostNamespace creates a throwaway network namespace that plays the host
// for one test (the daemon runs in it, pings start from it) and deletes it
// afterwards. (daemon.stop checks that no sandbox namespace is left.)
func hostNamespace(t *testing.T) (name, path string) {
	t.Helper()
	testutil.RequiresRoot(t)
	name = fmt.Sprintf("vmmit-%d-%d", os.Getpid(), hostNSSeq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("skipping: cannot create a network namespace: %v %s", err, out)
	}
	path = "/run/netns/" + name
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return name, path
}

// sandboxNamespaces lists the named namespaces of sandboxes, each as
// vmm-<id> whatever the bridge that scopes it (vmm-<bridge>.<id>).
func sandboxNamespaces() map[string]bool {
	entries, _ := os.ReadDir("/run/netns")
	m := map[string]bool{}
	for _, e := range entries {
		if rest, ok := strings.CutPrefix(e.Name(), "vmm-"); ok {
			if i := strings.LastIndexByte(rest, '.'); i >= 0 {
				rest = rest[i+1:]
			}
			m["vmm-"+rest] = true
		}
	}
	return m
}

// sandboxNetns returns the path of sandbox id's network namespace
// (/run/netns/vmm-<bridge>.<id>, whatever the bridge), or a path that does
// not exist when it has none.
func sandboxNetns(id string) string {
	if paths, _ := filepath.Glob("/run/netns/vmm-*." + id); len(paths) == 1 {
		return paths[0]
	}
	return "/run/netns/vmm-none." + id
}

// inNetns runs fn inside the namespace at path.
func inNetns(t *testing.T, path string, fn func()) {
	t.Helper()
	if err := testutil.InNetns(path, func() error { fn(); return nil }); err != nil {
		t.Fatalf("entering %s: %v", path, err)
	}
}

// ping reports whether addr answers ICMP echo from the named namespace.
func ping(t *testing.T, nsName, addr string) bool {
	t.Helper()
	ok, err := testutil.Ping("/run/netns/"+nsName, addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// netDaemon starts a daemon with networking inside a fresh host namespace.
func netDaemon(t *testing.T, netConf string, extra string) (*daemon, string) {
	t.Helper()
	name, path := hostNamespace(t)
	d := startDaemon(t, options{network: netConf, netns: path, extra: extra})
	return d, name
}

func createReady(t *testing.T, d *daemon) *sandboxv1.Sandbox {
	t.Helper()
	r, err := d.sb.Create(t.Context(), &sandboxv1.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return d.waitState(r.GetSandbox().GetId(), sandboxv1.SandboxState_SANDBOX_STATE_READY, 15*time.Second)
}

func TestNetworkPingIsolationAndInspect(t *testing.T) {
	d, hostNS := netDaemon(t, "bridge = \"vmmbr0\"\ncidr = \"10.200.0.0/24\"\ndns = [\"10.200.0.1\"]\n", "")
	a, b := createReady(t, d), createReady(t, d)
	for _, s := range []*sandboxv1.Sandbox{a, b} {
		n := s.GetNetwork()
		ip, err := netip.ParseAddr(n.GetIpAddress())
		if err != nil || !netip.MustParsePrefix("10.200.0.0/24").Contains(ip) || ip.String() == "10.200.0.1" {
			t.Fatalf("sandbox %s address %q", s.GetId(), n.GetIpAddress())
		}
		if n.GetTapDevice() != "tap0" || n.GetMacAddress() == "" || n.GetGateway() != "10.200.0.1" ||
			n.GetGuestIpAddress() != "172.16.0.2" || len(n.GetDns()) != 1 || n.GetNetns() == "" {
			t.Fatalf("inspect network = %v", n)
		}
		if !strings.Contains(s.GetHardware().GetBootArgs(), "ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off") {
			t.Fatalf("boot args lack the ip= argument: %q", s.GetHardware().GetBootArgs())
		}
		if !ping(t, hostNS, n.GetIpAddress()) {
			t.Fatalf("sandbox %s at %s does not answer ping from the host namespace\n%s", s.GetId(), n.GetIpAddress(), d.logText())
		}
	}
	if a.GetNetwork().GetIpAddress() == b.GetNetwork().GetIpAddress() {
		t.Fatal("two sandboxes share an address")
	}
	// From sandbox A's namespace, B is unreachable (isolation on).
	if ping(t, a.GetNetwork().GetNetns(), b.GetNetwork().GetIpAddress()) {
		t.Fatal("sandbox A reaches sandbox B with isolation on")
	}
	// ... while the gateway (the host) is reachable.
	if !ping(t, a.GetNetwork().GetNetns(), "10.200.0.1") {
		t.Fatal("sandbox A cannot reach its gateway")
	}
	for _, s := range []*sandboxv1.Sandbox{a, b} {
		if _, err := d.sb.Remove(t.Context(), &sandboxv1.RemoveRequest{Id: s.GetId(), Force: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join("/run/netns", s.GetNetwork().GetNetns())); !os.IsNotExist(err) {
			t.Fatalf("namespace %s still exists after remove: %v", s.GetNetwork().GetNetns(), err)
		}
	}
	if ping(t, hostNS, a.GetNetwork().GetIpAddress()) {
		t.Fatal("a removed sandbox still answers")
	}
}

func TestNetworkInterSandboxAllowed(t *testing.T) {
	d, _ := netDaemon(t, "bridge = \"vmmbr1\"\ncidr = \"10.201.0.0/24\"\nallow_inter_sandbox = true\n", "")
	a, b := createReady(t, d), createReady(t, d)
	if !ping(t, a.GetNetwork().GetNetns(), b.GetNetwork().GetIpAddress()) {
		t.Fatal("sandboxes cannot reach each other with allow_inter_sandbox = true")
	}
}

// The daemon's TCP API is closed to sandboxes on the port it is bound to,
// also when tcp_addr names port 0 (a random port, not in the config).
func TestNetworkDaemonTCPAPIUnreachableFromSandboxes(t *testing.T) {
	for _, tc := range []struct {
		name string
		port int
	}{{"configured port", 39091}, {"port 0", 0}} {
		t.Run(tc.name, func(t *testing.T) { testTCPAPIUnreachable(t, tc.port) })
	}
}

// testTCPAPIUnreachable runs a daemon whose TCP API listens on every host
// address at port and checks sandboxes cannot reach it while the host can.
func testTCPAPIUnreachable(t *testing.T, port int) {
	d, _ := netDaemon(t, "bridge = \"vmmbr2\"\ncidr = \"10.202.0.0/24\"\n", "")
	// The TCP API listens on every address of the host namespace.
	d.stop()
	conf, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	conf = []byte(strings.Replace(string(conf), "[grpc]\n", fmt.Sprintf("[grpc]\ntcp_addr = \"0.0.0.0:%d\"\ntcp_insecure = true\n", port), 1))
	if err := os.WriteFile(d.config, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	d.start()
	if port == 0 {
		m := regexp.MustCompile(`vmm-daemon ready.* tcp=\S*:(\d+)`).FindAllStringSubmatch(d.logText(), -1)
		if len(m) == 0 {
			t.Fatalf("no bound TCP port in the log:\n%s", d.logText())
		}
		port, _ = strconv.Atoi(m[len(m)-1][1])
	}
	s := createReady(t, d)
	var fromSandbox, fromHost error
	inNetns(t, "/run/netns/"+s.GetNetwork().GetNetns(), func() {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("10.202.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
		}
		fromSandbox = err
	})
	inNetns(t, d.netns, func() {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("10.202.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
		}
		fromHost = err
	})
	if fromHost != nil {
		t.Fatalf("the TCP API is not reachable from the host namespace itself: %v", fromHost)
	}
	if fromSandbox == nil {
		t.Fatal("a sandbox reached the daemon's TCP API")
	}
}

func TestNetworkPoolExhaustionAndRecovery(t *testing.T) {
	// A /29 has 8 addresses: network, gateway and broadcast are never
	// leased, which leaves 5.
	d, _ := netDaemon(t, "bridge = \"vmmbr3\"\ncidr = \"10.203.0.0/29\"\n", "")
	var ids []string
	for range 5 {
		ids = append(ids, createReady(t, d).GetId())
	}
	nsBefore := len(sandboxNamespaces())
	dirsBefore := len(d.sandboxDirs())
	_, err := d.sb.Create(t.Context(), &sandboxv1.CreateRequest{})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "10.203.0.0/29") {
		t.Fatalf("sixth create: %v, want ResourceExhausted naming the pool", err)
	}
	if len(sandboxNamespaces()) != nsBefore || len(d.sandboxDirs()) != dirsBefore {
		t.Fatal("the refused create left a namespace or directory behind")
	}
	if _, err := d.sb.Remove(t.Context(), &sandboxv1.RemoveRequest{Id: ids[0], Force: true}); err != nil {
		t.Fatal(err)
	}
	createReady(t, d)
}

func TestNetwork200SandboxesGetDistinctAddresses(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping 200 sandboxes in -short mode")
	}
	d, _ := netDaemon(t, "bridge = \"vmmbr4\"\ncidr = \"10.204.0.0/16\"\n", "[limits]\nmax_sandboxes = 250\nmax_total_vcpus = 256\nmax_total_memory_mib = 32768\n")
	const n = 200
	ids := make([]string, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			r, err := d.sb.Create(t.Context(), &sandboxv1.CreateRequest{MemoryMib: 128})
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = r.GetSandbox().GetId()
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	addrs := map[string]string{}
	for _, id := range ids {
		s := d.waitState(id, sandboxv1.SandboxState_SANDBOX_STATE_READY, 60*time.Second)
		ip := s.GetNetwork().GetIpAddress()
		if other, dup := addrs[ip]; dup {
			t.Fatalf("%s and %s share %s", other, id, ip)
		}
		addrs[ip] = id
	}
	if len(addrs) != n {
		t.Fatalf("%d distinct addresses for %d sandboxes", len(addrs), n)
	}
	// Shutting the daemon down removes every sandbox and its network.
	d.stop()
}

func TestNetworkRestartTwiceLeavesOneBridgeAndOneTable(t *testing.T) {
	d, hostNS := netDaemon(t, "bridge = \"vmmbr5\"\ncidr = \"10.205.0.0/24\"\n", "")
	createReady(t, d)
	for range 2 {
		d.stop()
		d.start()
	}
	s := createReady(t, d)
	out, err := exec.Command("ip", "-n", hostNS, "-o", "link", "show", "type", "bridge").CombinedOutput()
	if err != nil {
		t.Fatalf("listing bridges: %v %s", err, out)
	}
	if got := strings.Count(string(out), "vmmbr5"); got != 1 {
		t.Fatalf("%d bridges named vmmbr5 after two restarts:\n%s", got, out)
	}
	addrs, _ := exec.Command("ip", "-n", hostNS, "-o", "-4", "addr", "show", "dev", "vmmbr5").CombinedOutput()
	if got := strings.Count(string(addrs), "10.205.0.1/24"); got != 1 {
		t.Fatalf("gateway address present %d times:\n%s", got, addrs)
	}
	// One host table, and one source filter table per sandbox's port.
	tables := nftTables(t, d.netns)
	ports := 0
	for name, n := range tables {
		if strings.HasPrefix(name, "firecracker-vmm-vmmbr5-vh") && n == 1 {
			ports++
		}
	}
	if tables["firecracker-vmm-vmmbr5"] != 1 || ports == 0 || len(tables) != 1+ports {
		t.Fatalf("nftables tables in the host namespace after two restarts: %v", tables)
	}
	if !ping(t, hostNS, s.GetNetwork().GetIpAddress()) {
		t.Fatal("sandbox unreachable after restarts")
	}
}

// nftTables counts the nftables tables by name in the namespace at path.
func nftTables(t *testing.T, path string) map[string]int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatalf("listing nftables tables: %v", err)
	}
	m := map[string]int{}
	for _, tb := range tables {
		m[tb.Name]++
	}
	return m
}
