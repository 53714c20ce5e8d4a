package network

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

func TestNewValidation(t *testing.T) {
	good := defaultTestConfig("")
	for _, tc := range []struct {
		name   string
		modify func(*Config)
	}{
		{"no bridge", func(c *Config) { c.Bridge = "" }},
		{"long bridge", func(c *Config) { c.Bridge = "abcdefghijklmnop" }},
		{"bridge with slash", func(c *Config) { c.Bridge = "br/0" }},
		{"bridge with colon", func(c *Config) { c.Bridge = "br:0" }},
		{"no cidr", func(c *Config) { c.CIDR = netip.Prefix{} }},
		{"ipv6 cidr", func(c *Config) { c.CIDR = netip.MustParsePrefix("fd00::/64") }},
		{"cidr host bits", func(c *Config) { c.CIDR = netip.MustParsePrefix("10.99.0.1/24") }},
		{"cidr /31", func(c *Config) {
			c.CIDR, c.Gateway = netip.MustParsePrefix("10.99.0.0/31"), netip.MustParseAddr("10.99.0.1")
		}},
		{"cidr overlaps guest /30", func(c *Config) {
			c.CIDR, c.Gateway = netip.MustParsePrefix("172.16.0.0/12"), netip.MustParseAddr("172.16.1.1")
		}},
		{"cidr inside guest /30", func(c *Config) {
			c.CIDR, c.Gateway = netip.MustParsePrefix("172.16.0.0/30"), netip.MustParseAddr("172.16.0.1")
		}},
		{"no gateway", func(c *Config) { c.Gateway = netip.Addr{} }},
		{"ipv6 gateway", func(c *Config) { c.Gateway = netip.MustParseAddr("fd00::1") }},
		{"gateway outside", func(c *Config) { c.Gateway = netip.MustParseAddr("10.98.0.1") }},
		{"gateway network", func(c *Config) { c.Gateway = netip.MustParseAddr("10.99.0.0") }},
		{"gateway broadcast", func(c *Config) { c.Gateway = netip.MustParseAddr("10.99.0.255") }},
		{"ipv6 dns", func(c *Config) { c.DNS = []netip.Addr{netip.MustParseAddr("fd00::53")} }},
		{"zero dns", func(c *Config) { c.DNS = []netip.Addr{{}} }},
		{"port 0", func(c *Config) { c.DenyTCPPorts = []uint16{0} }},
		{"relative netns dir", func(c *Config) { c.NetnsDir = "run/netns" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.modify(&cfg)
			m, err := New(cfg)
			if err == nil {
				m.Close()
				t.Fatal("New accepted the configuration")
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("New: got %v, want InvalidArgument", err)
			}
		})
	}
	t.Run("good", func(t *testing.T) {
		m, err := New(good)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		defer m.Close()
		if got := m.cfg.NetnsDir; got != DefaultNetnsDir {
			t.Errorf("NetnsDir default = %q", got)
		}
	})
}

func TestNames(t *testing.T) {
	if got := GuestMAC(netip.MustParseAddr("172.20.0.5")); got != "06:00:ac:14:00:05" {
		t.Errorf("GuestMAC = %s", got)
	}
	for _, tc := range []struct {
		dns  []string
		want string
	}{
		{nil, "ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off"},
		{[]string{"1.1.1.1"}, "ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off:1.1.1.1"},
		{[]string{"1.1.1.1", "8.8.8.8", "9.9.9.9"}, "ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off:1.1.1.1:8.8.8.8"},
	} {
		var dns []netip.Addr
		for _, d := range tc.dns {
			dns = append(dns, netip.MustParseAddr(d))
		}
		if got := BootArg(dns); got != tc.want {
			t.Errorf("BootArg(%v) = %s, want %s", tc.dns, got, tc.want)
		}
	}
	for _, id := range []string{"012345678", "0123456789", "0123456789ab", "a-much-longer-sandbox-identifier"} {
		for _, br := range []string{"vmmbr0", "a-long-bridge-x"} {
			n := HostVethName(br, id)
			if len(n) >= unix.IFNAMSIZ || !validIfname(n) {
				t.Errorf("HostVethName(%q, %q) = %q does not fit IFNAMSIZ", br, id, n)
			}
			if n == HostVethName(br+"1", id) {
				t.Errorf("HostVethName(%q, %q) = %q is not scoped by the bridge", br, id, n)
			}
		}
	}
	if n := HostVethName("vmmbr0", "012345678"); !strings.HasPrefix(n, HostVethPrefix) || !strings.HasSuffix(n, "012345678") {
		t.Errorf("short id not used as is: %s", n)
	}
	if HostVethName("b", "a-much-longer-sandbox-identifier") == HostVethName("b", "a-much-longer-sandbox-identifieR") {
		t.Error("hashed veth names collide")
	}
	if n := NetnsName("vmmbr0", "abc"); n != "vmm-vmmbr0.abc" {
		t.Errorf("NetnsName = %s", n)
	}
}

func TestSetupIdempotent(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.DenyTCPPorts = []uint16{7070, 7071} })
	machineForward, _ := os.ReadFile(ipForwardSysctl)
	for range 2 { // newEnv ran it once
		if err := e.m.Setup(context.Background()); err != nil {
			t.Fatalf("Setup again: %v", err)
		}
	}
	if got, _ := os.ReadFile(ipForwardSysctl); !bytes.Equal(got, machineForward) {
		t.Errorf("machine's ip_forward changed from %q to %q", machineForward, got)
	}
	if v := readSysctlIn(t, e.host, ipForwardSysctl); v != "1" {
		t.Errorf("host ip_forward = %s, want 1", v)
	}
	inNS(t, e.host, func(h *netlink.Handle) {
		links, err := h.LinkList()
		if err != nil {
			t.Fatal(err)
		}
		var bridges []string
		for _, l := range links {
			if l.Type() == "bridge" {
				bridges = append(bridges, l.Attrs().Name)
			}
		}
		if !slices.Equal(bridges, []string{"vmmbr0"}) {
			t.Fatalf("bridges = %v, want [vmmbr0]", bridges)
		}
		br, _ := h.LinkByName("vmmbr0")
		if br.Attrs().Flags&net.FlagUp == 0 {
			t.Error("bridge is down")
		}
		if got := br.Attrs().HardwareAddr.String(); got != "02:00:0a:63:00:01" {
			t.Errorf("bridge MAC = %s, want 02:00:0a:63:00:01", got)
		}
		addrs, err := h.AddrList(br, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		if len(addrs) != 1 || addrs[0].IPNet.String() != "10.99.0.1/24" {
			t.Errorf("bridge addresses = %v, want [10.99.0.1/24]", addrs)
		}
	})
	c, done := nsConn(t, e.host)
	defer done()
	tables, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	if len(tables) != 1 || tables[0].Name != HostTableName("vmmbr0") || tables[0].Family != nftables.TableFamilyINet {
		t.Fatalf("tables = %v, want one inet %s", nsTables(t, e.host), HostTableName("vmmbr0"))
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{chainPostrouting: 1, chainForward: 4, chainInput: 2}
	if len(chains) != len(want) {
		t.Errorf("%d chains, want %d", len(chains), len(want))
	}
	for _, ch := range chains {
		rules, err := c.GetRules(tables[0], ch)
		if err != nil {
			t.Fatal(err)
		}
		if len(rules) != want[ch.Name] {
			t.Errorf("chain %s has %d rules, want %d", ch.Name, len(rules), want[ch.Name])
		}
		if ch.Name == chainPostrouting && len(rules) == 1 && !hasExpr[*expr.Masq](rules[0]) {
			t.Errorf("postrouting rule without masquerade: %v", rules[0].Exprs)
		}
	}
}

// hasExpr reports whether rule r contains an expression of type E.
func hasExpr[E expr.Any](r *nftables.Rule) bool {
	for _, x := range r.Exprs {
		if _, ok := x.(E); ok {
			return true
		}
	}
	return false
}

func TestSetupConflictingBridge(t *testing.T) {
	host := newTestHost(t)
	inNS(t, host, func(h *netlink.Handle) {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vmmbr0"}, PeerName: "vmmbr0peer"}
		if err := h.LinkAdd(veth); err != nil {
			t.Fatal(err)
		}
	})
	m, err := New(defaultTestConfig(host))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Setup(context.Background()); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Setup over a veth called like the bridge: got %v, want FailedPrecondition", err)
	}
	inNS(t, host, func(h *netlink.Handle) {
		l, err := h.LinkByName("vmmbr0")
		if err != nil || l.Type() != "veth" {
			t.Fatalf("the veth was touched: %v, %v", l, err)
		}
		h.LinkDel(l)
	})
	if tables := nsTables(t, host); len(tables) != 0 {
		t.Errorf("tables after failed setup: %v", tables)
	}
}

func TestAttach(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	att := e.attach(ctx)

	if att.SandboxID == "" || att.Netns != NetnsName("vmmbr0", att.SandboxID) || att.NetnsPath != DefaultNetnsDir+"/"+att.Netns ||
		att.TAP != TAPName || att.HostVeth != HostVethName("vmmbr0", att.SandboxID) || att.PrefixLen != 24 ||
		att.Gateway != e.m.cfg.Gateway || att.GuestIP != GuestAddr || att.GuestMAC != GuestMAC(att.IP) ||
		att.BootArg != BootArg(e.m.cfg.DNS) || len(att.DNS) != 2 || !e.m.cfg.CIDR.Contains(att.IP) {
		t.Errorf("attachment = %+v", att)
	}
	if att.IP == e.m.cfg.Gateway || att.IP == e.m.cfg.CIDR.Addr() {
		t.Errorf("attachment got a reserved address %s", att.IP)
	}
	if !isNetnsMount(att.NetnsPath) {
		t.Fatalf("%s is not a namespace mount", att.NetnsPath)
	}
	if got := leases(e.m); got[att.SandboxID] != att.IP || len(got) != 1 {
		t.Errorf("leases = %v", got)
	}
	if ids, err := e.m.ListNetns(); err != nil || !slices.Contains(ids, att.SandboxID) {
		t.Errorf("ListNetns = %v, %v; want it to include %s", ids, err, att.SandboxID)
	}

	// Host side: the veth is an isolated, up port of the bridge.
	inNS(t, e.host, func(h *netlink.Handle) {
		br, err := h.LinkByName("vmmbr0")
		if err != nil {
			t.Fatal(err)
		}
		l, err := h.LinkByName(att.HostVeth)
		if err != nil {
			t.Fatalf("host veth: %v", err)
		}
		if l.Type() != "veth" || l.Attrs().MasterIndex != br.Attrs().Index || l.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("host veth: type %s master %d (bridge %d) flags %v", l.Type(), l.Attrs().MasterIndex, br.Attrs().Index, l.Attrs().Flags)
		}
		pi, err := h.LinkGetProtinfo(l)
		if err != nil {
			t.Fatal(err)
		}
		if !pi.Isolated {
			t.Error("host veth is not an isolated bridge port")
		}
	})

	// Sandbox side.
	if got := nsLinks(t, att.NetnsPath); !slices.Equal(got, []string{NamespaceIface, "lo", TAPName}) {
		t.Errorf("sandbox links = %v", got)
	}
	inNS(t, att.NetnsPath, func(h *netlink.Handle) {
		for _, tc := range []struct {
			name, typ, addr string
		}{
			{"lo", "device", "127.0.0.1/8"},
			{NamespaceIface, "veth", fmt.Sprintf("%s/24", att.IP)},
			{TAPName, "tuntap", "172.16.0.1/30"},
		} {
			l, err := h.LinkByName(tc.name)
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if l.Type() != tc.typ || l.Attrs().Flags&net.FlagUp == 0 {
				t.Errorf("%s: type %s flags %v", tc.name, l.Type(), l.Attrs().Flags)
			}
			addrs, _ := h.AddrList(l, netlink.FAMILY_V4)
			if len(addrs) != 1 || addrs[0].IPNet.String() != tc.addr {
				t.Errorf("%s addresses = %v, want %s", tc.name, addrs, tc.addr)
			}
			if tap, ok := l.(*netlink.Tuntap); ok && tap.Mode != netlink.TUNTAP_MODE_TAP {
				t.Errorf("%s mode = %v", tc.name, tap.Mode)
			}
		}
		routes, err := h.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		var gw net.IP
		for _, r := range routes {
			if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
				gw = r.Gw
			}
		}
		if !gw.Equal(net.IP(att.Gateway.AsSlice())) {
			t.Errorf("default route via %v, want %s (routes %v)", gw, att.Gateway, routes)
		}
	})
	if v := readSysctlIn(t, att.NetnsPath, ipForwardSysctl); v != "1" {
		t.Errorf("sandbox ip_forward = %s", v)
	}
	c, done := nsConn(t, att.NetnsPath)
	defer done()
	tables, err := c.ListTables()
	want := []string{fmt.Sprintf("%d/%s", nftables.TableFamilyIPv4, TableName), fmt.Sprintf("%d/%s", nftables.TableFamilyNetdev, TableName)}
	if got := nsTables(t, att.NetnsPath); err != nil || !sameSet(got, want) {
		t.Fatalf("sandbox tables = %v, %v; want %v", got, err, want)
	}
	tables = slices.DeleteFunc(tables, func(tb *nftables.Table) bool { return tb.Family != nftables.TableFamilyIPv4 })
	for _, name := range []string{chainPrerouting, chainPostrouting} {
		rules, err := c.GetRules(tables[0], &nftables.Chain{Name: name, Table: tables[0]})
		if err != nil || len(rules) != 1 {
			t.Fatalf("chain %s: %d rules, %v", name, len(rules), err)
		}
		nat, imm := findNAT(rules[0])
		wantType, wantAddr := expr.NATTypeDestNAT, GuestAddr
		if name == chainPostrouting {
			wantType, wantAddr = expr.NATTypeSourceNAT, att.IP
		}
		if nat == nil || nat.Type != wantType || imm != wantAddr {
			t.Errorf("chain %s: nat %+v to %s, want type %v to %s", name, nat, imm, wantType, wantAddr)
		}
	}

	// A second Attach of the same sandbox is refused and changes nothing.
	if _, err := e.m.Attach(ctx, att.SandboxID); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("second Attach: got %v, want AlreadyExists", err)
	}
	if got := leases(e.m); got[att.SandboxID] != att.IP {
		t.Errorf("leases after second Attach = %v", got)
	}

	// Detach removes everything, twice is fine.
	for i := range 2 {
		if err := e.m.Detach(ctx, att.SandboxID); err != nil {
			t.Fatalf("Detach %d: %v", i, err)
		}
	}
	if _, err := os.Stat(att.NetnsPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace mount point left: %v", err)
	}
	if got := nsLinks(t, e.host); !slices.Equal(got, []string{"lo", "vmmbr0"}) {
		t.Errorf("host links after Detach = %v", got)
	}
	if len(leases(e.m)) != 0 {
		t.Errorf("leases after Detach = %v", leases(e.m))
	}
	if ids, _ := e.m.ListNetns(); slices.Contains(ids, att.SandboxID) {
		t.Errorf("ListNetns after Detach = %v", ids)
	}
	// Never attached.
	if err := e.m.Detach(ctx, e.id()); err != nil {
		t.Errorf("Detach of an unknown sandbox: %v", err)
	}
	if err := e.m.Detach(ctx, "../etc"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Detach with a bad id: got %v, want InvalidArgument", err)
	}
}

// findNAT returns the NAT expression of r and the address loaded before it.
func findNAT(r *nftables.Rule) (*expr.NAT, netip.Addr) {
	var addr netip.Addr
	for _, x := range r.Exprs {
		switch x := x.(type) {
		case *expr.Immediate:
			addr, _ = netip.AddrFromSlice(x.Data)
		case *expr.NAT:
			return x, addr
		}
	}
	return nil, addr
}

func TestPingSandbox(t *testing.T) {
	e := newEnv(t, nil)
	att := e.attach(context.Background())
	// Nothing answers yet: the address leads to an empty TAP.
	if err := ping(e.host, att.IP, 300*time.Millisecond); !errors.Is(err, errNoReply) {
		t.Fatalf("ping with no guest behind the TAP: got %v, want no reply", err)
	}
	startGuest(t, att)
	if err := ping(e.host, att.IP, 3*time.Second); err != nil {
		t.Fatalf("ping %s from the host: %v", att.IP, err)
	}
	// The gateway is reachable from the sandbox namespace too.
	if err := ping(att.NetnsPath, att.Gateway, 3*time.Second); err != nil {
		t.Fatalf("ping the gateway from the sandbox: %v", err)
	}
}

// TestClones shows the clone-safe design: two sandboxes whose guests have
// the same address and MAC-independent TAP are reachable at once.
func TestClones(t *testing.T) {
	e := newEnv(t, nil)
	a, b := e.attach(context.Background()), e.attach(context.Background())
	if a.GuestIP != b.GuestIP || a.TAP != b.TAP || a.BootArg != b.BootArg || a.IP == b.IP {
		t.Fatalf("guest sides differ or unique addresses collide: %+v %+v", a, b)
	}
	startGuest(t, a)
	startGuest(t, b)
	for _, att := range []Attachment{a, b} {
		if err := ping(e.host, att.IP, 3*time.Second); err != nil {
			t.Errorf("ping %s: %v", att.IP, err)
		}
	}
}

func TestIsolation(t *testing.T) {
	for _, tc := range []struct {
		name  string
		allow bool
	}{
		{"isolated", false},
		{"allowed", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) { c.AllowInterSandbox = tc.allow })
			a, b := e.attach(context.Background()), e.attach(context.Background())
			startGuest(t, a)
			startGuest(t, b)
			for _, att := range []Attachment{a, b} {
				if err := ping(e.host, att.IP, 3*time.Second); err != nil {
					t.Fatalf("ping %s from the host: %v", att.IP, err)
				}
			}
			timeout := time.Second
			if tc.allow {
				timeout = 3 * time.Second
			}
			for _, p := range [][2]Attachment{{a, b}, {b, a}} {
				err := ping(p[0].NetnsPath, p[1].IP, timeout)
				if tc.allow && err != nil {
					t.Errorf("%s cannot reach %s: %v", p[0].SandboxID, p[1].IP, err)
				}
				if !tc.allow && !errors.Is(err, errNoReply) {
					t.Errorf("%s → %s despite isolation: got %v, want no reply", p[0].SandboxID, p[1].IP, err)
				}
			}
		})
	}
}

func TestDenyTCPPorts(t *testing.T) {
	const denied, allowed = 7443, 7444
	e := newEnv(t, func(c *Config) { c.DenyTCPPorts = []uint16{denied} })
	att := e.attach(context.Background())
	tcpListener(t, e.host, denied)
	tcpListener(t, e.host, allowed)
	gw := e.m.cfg.Gateway
	if err := dialFrom(att.NetnsPath, netip.AddrPortFrom(gw, allowed), 3*time.Second); err != nil {
		t.Errorf("dial allowed port %d from the sandbox: %v", allowed, err)
	}
	err := dialFrom(att.NetnsPath, netip.AddrPortFrom(gw, denied), 500*time.Millisecond)
	if ne, ok := errors.AsType[net.Error](err); !ok || !ne.Timeout() {
		t.Errorf("dial denied port %d from the sandbox: got %v, want a timeout (dropped)", denied, err)
	}
	// The host itself still reaches its own port.
	if err := dialFrom(e.host, netip.AddrPortFrom(gw, denied), 3*time.Second); err != nil {
		t.Errorf("dial denied port from the host: %v", err)
	}
}

func TestManyAttaches(t *testing.T) {
	const n, workers = 200, 8
	e := newEnv(t, nil)
	ctx := context.Background()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = e.id()
	}
	start := time.Now()
	var (
		mu   sync.Mutex
		ips  = map[netip.Addr]string{}
		errs []error
		wg   sync.WaitGroup
		work = make(chan string)
	)
	for range workers {
		wg.Go(func() {
			for id := range work {
				att, err := e.m.Attach(ctx, id)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else if other, dup := ips[att.IP]; dup {
					errs = append(errs, fmt.Errorf("%s given to %s and %s", att.IP, other, id))
				} else {
					ips[att.IP] = id
				}
				mu.Unlock()
			}
		})
	}
	for _, id := range ids {
		work <- id
	}
	close(work)
	wg.Wait()
	attached := time.Since(start)
	t.Cleanup(func() { // also on failure
		for _, id := range ids {
			if err := e.m.Detach(context.Background(), id); err != nil {
				t.Errorf("Detach(%s): %v", id, err)
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if len(ips) != n || len(leases(e.m)) != n || len(e.netnsLeft()) != n {
		t.Fatalf("%d addresses, %d leases, %d namespaces; want %d", len(ips), len(leases(e.m)), len(e.netnsLeft()), n)
	}
	if links := nsLinks(t, e.host); len(links) != n+2 {
		t.Errorf("%d host links, want %d", len(links), n+2)
	}
	start = time.Now()
	for _, id := range ids {
		if err := e.m.Detach(ctx, id); err != nil {
			t.Fatalf("Detach(%s): %v", id, err)
		}
	}
	t.Logf("%d attaches in %v (%v each), detaches in %v", n, attached, attached/n, time.Since(start))
}

func TestExhaustion(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.CIDR, c.Gateway = netip.MustParsePrefix("10.99.0.0/29"), netip.MustParseAddr("10.99.0.1")
	})
	ctx := context.Background()
	var atts []Attachment
	for range 5 {
		atts = append(atts, e.attach(ctx))
	}
	before := nsLinks(t, e.host)
	id := e.id()
	_, err := e.m.Attach(ctx, id)
	if !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Fatalf("6th Attach on a /29: got %v, want ResourceExhausted", err)
	}
	if _, err := os.Stat(netnsPath(DefaultNetnsDir, NetnsName(e.m.cfg.Bridge, id))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed Attach left its namespace: %v", err)
	}
	if after := nsLinks(t, e.host); !slices.Equal(before, after) {
		t.Errorf("failed Attach changed host links: %v → %v", before, after)
	}
	if len(e.netnsLeft()) != 5 || len(leases(e.m)) != 5 {
		t.Errorf("%d namespaces, %d leases after the failure, want 5", len(e.netnsLeft()), len(leases(e.m)))
	}
	if err := e.m.Detach(ctx, atts[2].SandboxID); err != nil {
		t.Fatal(err)
	}
	att, err := e.m.Attach(ctx, id)
	if err != nil {
		t.Fatalf("Attach after a Detach: %v", err)
	}
	t.Cleanup(func() { e.m.Detach(context.Background(), id) })
	if att.IP != atts[2].IP {
		t.Errorf("got %s, want the only free address %s", att.IP, atts[2].IP)
	}
}

func TestAttachRollback(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	type tc struct {
		name    string
		prepare func(t *testing.T, id string) (cleanup func()) // makes Attach fail
		check   func(error) bool
	}
	cases := []tc{
		{
			name: "host veth name taken",
			prepare: func(t *testing.T, id string) func() {
				name := HostVethName(e.m.cfg.Bridge, id)
				inNS(t, e.host, func(h *netlink.Handle) {
					if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
						t.Fatal(err)
					}
				})
				return func() {
					inNS(t, e.host, func(h *netlink.Handle) {
						l, err := h.LinkByName(name)
						if err != nil || l.Type() != "bridge" {
							t.Errorf("the conflicting interface was touched: %v %v", l, err)
							return
						}
						h.LinkDel(l)
					})
				}
			},
			check: isClass(errdefs.ErrAlreadyExists),
		},
		{
			name: "namespace name taken",
			prepare: func(t *testing.T, id string) func() {
				p := netnsPath(DefaultNetnsDir, NetnsName(e.m.cfg.Bridge, id))
				if err := os.WriteFile(p, nil, 0o444); err != nil {
					t.Fatal(err)
				}
				return func() {
					if _, err := os.Stat(p); err != nil {
						t.Errorf("the existing file was touched: %v", err)
					}
					os.Remove(p)
				}
			},
			check: isClass(errdefs.ErrAlreadyExists),
		},
		{
			name: "canceled",
			prepare: func(t *testing.T, id string) func() {
				return nil
			},
			check: func(err error) bool { return errors.Is(err, context.Canceled) },
		},
	}
	for _, step := range []string{stepNetns, stepInit, stepVeth, stepFilter, stepPort, stepAddress, stepNAT} {
		cases = append(cases, tc{
			name: "fail at " + step,
			prepare: func(t *testing.T, id string) func() {
				e.m.failAt = step
				return func() { e.m.failAt = "" }
			},
			check: func(err error) bool { return err != nil },
		})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := e.id()
			cleanup := c.prepare(t, id)
			hostBefore := nsLinks(t, e.host)
			actx := ctx
			if c.name == "canceled" {
				var cancel context.CancelFunc
				actx, cancel = context.WithCancel(ctx)
				cancel()
			}
			att, err := e.m.Attach(actx, id)
			if err == nil || !c.check(err) {
				t.Fatalf("Attach: got %v (%+v)", err, att)
			}
			if after := nsLinks(t, e.host); !slices.Equal(hostBefore, after) {
				t.Errorf("host links changed: %v → %v", hostBefore, after)
			}
			if len(leases(e.m)) != 0 {
				t.Errorf("leases left: %v", leases(e.m))
			}
			if cleanup != nil {
				cleanup()
			}
			if left := e.netnsLeft(); len(left) != 0 {
				t.Errorf("namespaces left: %v", left)
			}
			// Nothing half-made is in the way of a good Attach.
			if _, err := e.m.Attach(ctx, id); err != nil {
				t.Fatalf("Attach after the failure: %v", err)
			}
			if err := e.m.Detach(ctx, id); err != nil {
				t.Fatalf("Detach: %v", err)
			}
		})
	}
}

func TestRunInNetns(t *testing.T) {
	host := newTestHost(t)
	var inside string
	if err := runInNetns(host, func() error {
		var err error
		inside, err = os.Readlink(threadNetnsPath())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(host, &st); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("net:[%d]", st.Ino); inside != want {
		t.Errorf("inside: %s, want %s", inside, want)
	}
	sentinel := errors.New("boom")
	if err := runInNetns(host, func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("error not passed through: %v", err)
	}
	if err := runInNetns("/nonexistent", func() error { return nil }); err == nil {
		t.Error("runInNetns on a missing path succeeded")
	}
}

func TestReserve(t *testing.T) {
	e := newEnv(t, nil)
	id := e.id()
	ip := netip.MustParseAddr("10.99.0.2") // the first address Allocate would give
	if err := e.m.Reserve(id, ip); err != nil {
		t.Fatal(err)
	}
	att := e.attach(context.Background())
	if att.IP == ip {
		t.Errorf("Attach handed out the reserved %s", ip)
	}
	if d := e.m.Describe(id, ip); d.IP != ip || d.NetnsPath != netnsPath(DefaultNetnsDir, NetnsName(e.m.cfg.Bridge, id)) {
		t.Errorf("Describe = %+v", d)
	}
	if err := e.m.Detach(context.Background(), id); err != nil { // releases the reservation
		t.Fatal(err)
	}
	if _, ok := leases(e.m)[id]; ok {
		t.Error("reservation kept after Detach")
	}
}

func TestAttachWithoutSetup(t *testing.T) {
	host := newTestHost(t)
	m, err := New(defaultTestConfig(host))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	id := testIDMark + randHex(4) + "001"
	if _, err := m.Attach(context.Background(), id); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("Attach before Setup: got %v, want FailedPrecondition", err)
	}
	if _, err := os.Stat(netnsPath(DefaultNetnsDir, NetnsName(m.cfg.Bridge, id))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace left: %v", err)
	}
	if len(leases(m)) != 0 {
		t.Errorf("leases left: %v", leases(m))
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Attach(context.Background(), id); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Attach after Close: got %v, want FailedPrecondition", err)
	}
}

func TestTAPOwner(t *testing.T) {
	for _, tt := range []struct {
		name         string
		owner, group int
		want         [2]uint32
	}{
		{"jail owner", 64123, 64124, [2]uint32{64123, 64124}},
		{"default (unset, reported as 0)", -1, -1, [2]uint32{0, 0}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) { c.TAPOwner, c.TAPGroup = tt.owner, tt.group })
			att := e.attach(context.Background())
			var got [2]uint32
			err := runInNetns(att.NetnsPath, func() error {
				link, err := netlink.LinkByName(TAPName)
				if err != nil {
					return err
				}
				tun, ok := link.(*netlink.Tuntap)
				if !ok {
					return fmt.Errorf("%s is a %T", TAPName, link)
				}
				got = [2]uint32{tun.Owner, tun.Group}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("tap owner/group %v, want %v", got, tt.want)
			}
		})
	}
}
