package network

import (
	"context"
	"encoding/binary"
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
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// testEnv is one test's throwaway host namespace and the manager using it.
type testEnv struct {
	t      *testing.T
	host   string // host namespace path
	prefix string // every sandbox id of this test starts with it
	m      *Manager
	n      int // ids handed out
}

// newTestHost creates a throwaway namespace that plays the host and
// deletes it at the end of the test, after checking that nothing but lo
// and no nftables table is left in it.
func newTestHost(t *testing.T) string {
	t.Helper()
	testutil.RequiresRoot(t)
	if err := prepareNetnsDir(DefaultNetnsDir); err != nil {
		t.Fatalf("prepare %s: %v", DefaultNetnsDir, err)
	}
	path := netnsPath(DefaultNetnsDir, testHostPrefix+randHex(8))
	if err := createNetns(path, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		_ = deleteNetns(path)
		t.Fatalf("create test host namespace: %v", err)
	}
	t.Cleanup(func() {
		if links := nsLinks(t, path); !slices.Equal(links, []string{"lo"}) {
			t.Errorf("host namespace left with links %v, want [lo]", links)
		}
		if tables := nsTables(t, path); len(tables) != 0 {
			t.Errorf("host namespace left with nftables tables %v", tables)
		}
		if err := deleteNetns(path); err != nil {
			t.Errorf("delete test host namespace: %v", err)
		}
	})
	return path
}

// defaultTestConfig is the configuration the tests start from.
func defaultTestConfig(host string) Config {
	return Config{
		Bridge:    "vmmbr0",
		CIDR:      netip.MustParsePrefix("10.99.0.0/24"),
		Gateway:   netip.MustParseAddr("10.99.0.1"),
		DNS:       []netip.Addr{netip.MustParseAddr("10.99.0.53"), netip.MustParseAddr("9.9.9.9"), netip.MustParseAddr("8.8.8.8")},
		HostNetns: host,
	}
}

// newEnv makes a host namespace and a set-up Manager in it. At the end of
// the test it checks that no lease and no namespace of the test is left,
// then tears the host down.
func newEnv(t *testing.T, modify func(*Config)) *testEnv {
	t.Helper()
	host := newTestHost(t)
	cfg := defaultTestConfig(host)
	if modify != nil {
		modify(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e := &testEnv{t: t, host: host, prefix: testIDMark + randHex(4), m: m}
	t.Cleanup(func() {
		if l := leases(m); len(l) != 0 {
			t.Errorf("leases left: %v", l)
		}
		if left := e.netnsLeft(); len(left) != 0 {
			t.Errorf("namespaces left: %v", left)
		}
		if links := nsLinks(t, host); !slices.Equal(links, []string{"lo", cfg.Bridge}) && !slices.Equal(links, []string{"lo"}) {
			t.Errorf("host namespace links before teardown: %v, want only lo and the bridge", links)
		}
		if err := teardown(context.Background(), m); err != nil {
			t.Errorf("teardown: %v", err)
		}
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if err := m.Setup(context.Background()); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return e
}

// id returns a fresh sandbox id for this test.
func (e *testEnv) id() string {
	e.n++
	return fmt.Sprintf("%s%03d", e.prefix, e.n)
}

// netnsLeft lists this test's namespaces under NetnsDir.
func (e *testEnv) netnsLeft() []string {
	entries, _ := os.ReadDir(e.m.cfg.NetnsDir)
	var left []string
	for _, d := range entries {
		if strings.HasPrefix(d.Name(), netnsScope(e.m.cfg.Bridge)+e.prefix) {
			left = append(left, d.Name())
		}
	}
	return left
}

// attach attaches a new sandbox and detaches it at the end of the test.
func (e *testEnv) attach(ctx context.Context) Attachment {
	e.t.Helper()
	id := e.id()
	att, err := e.m.Attach(ctx, id)
	if err != nil {
		e.t.Fatalf("Attach(%s): %v", id, err)
	}
	e.t.Cleanup(func() {
		if err := e.m.Detach(context.Background(), id); err != nil {
			e.t.Errorf("Detach(%s): %v", id, err)
		}
	})
	return att
}

// leases returns the manager's held leases, sandbox id → address.
func leases(m *Manager) map[string]netip.Addr { return m.pool.Leases() }

// isClass returns a check that an error is of the errdefs class.
func isClass(class error) func(error) bool {
	return func(err error) bool { return errors.Is(err, class) }
}

// runInNetns is runInNS for the namespace at path (a bind mount such as
// /run/netns/vmm-<id>, or /proc/<pid>/ns/net).
func runInNetns(path string, fn func() error) error {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer h.Close()
	return runInNS(h, fn)
}

// inNS runs fn with a netlink handle in the namespace at path.
func inNS(t *testing.T, path string, fn func(h *netlink.Handle)) {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink at %s: %v", path, err)
	}
	defer h.Close()
	fn(h)
}

// nsLinks lists the sorted interface names in the namespace at path.
func nsLinks(t *testing.T, path string) []string {
	t.Helper()
	var names []string
	inNS(t, path, func(h *netlink.Handle) {
		links, err := h.LinkList()
		if err != nil {
			t.Fatalf("list links: %v", err)
		}
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
	})
	slices.Sort(names)
	return names
}

// nsConn opens an nftables connection to the namespace at path; the
// returned function closes the namespace handle.
func nsConn(t *testing.T, path string) (*nftables.Conn, func()) {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		ns.Close()
		t.Fatalf("nftables: %v", err)
	}
	return c, func() { ns.Close() }
}

// nsTables lists "family/name" of the nftables tables in the namespace.
func nsTables(t *testing.T, path string) []string {
	t.Helper()
	c, done := nsConn(t, path)
	defer done()
	tables, err := c.ListTables()
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	var out []string
	for _, tb := range tables {
		out = append(out, fmt.Sprintf("%d/%s", tb.Family, tb.Name))
	}
	return out
}

// readSysctlIn reads a sysctl from inside the namespace at path.
func readSysctlIn(t *testing.T, path, key string) string {
	t.Helper()
	var v string
	if err := runInNetns(path, func() error {
		b, err := os.ReadFile(key)
		v = strings.TrimSpace(string(b))
		return err
	}); err != nil {
		t.Fatalf("read %s in %s: %v", key, path, err)
	}
	return v
}

// guest stands in for a booted guest behind a sandbox's TAP: it answers
// ARP for GuestAddr and ICMP echo to it, with the attachment's MAC.
type guest struct {
	f    *os.File
	mac  net.HardwareAddr
	done chan struct{}
}

// startGuest attaches a guest stand-in to att's TAP until the test ends.
func startGuest(t *testing.T, att Attachment) {
	t.Helper()
	mac, err := net.ParseMAC(att.GuestMAC)
	if err != nil {
		t.Fatalf("guest MAC %q: %v", att.GuestMAC, err)
	}
	var f *os.File
	if err := runInNetns(att.NetnsPath, func() error {
		var err error
		f, err = openTAP(att.TAP)
		return err
	}); err != nil {
		t.Fatalf("open %s in %s: %v", att.TAP, att.Netns, err)
	}
	g := &guest{f: f, mac: mac, done: make(chan struct{})}
	go g.serve()
	t.Cleanup(func() {
		f.Close()
		<-g.done
	})
}

// openTAP attaches to the existing TAP name in the calling thread's
// namespace without a virtio-net header: one read is one Ethernet frame.
// The file is pollable, so Close unblocks a pending Read.
func openTAP(name string) (*os.File, error) {
	req, err := unix.NewIfreq(name)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	req.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, req); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	// Non-blocking before os.NewFile, so the runtime poller takes it.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}

func (g *guest) serve() {
	defer close(g.done)
	buf := make([]byte, 2048)
	guestIP := GuestAddr.As4()
	for {
		n, err := g.f.Read(buf)
		if err != nil {
			return
		}
		fr := buf[:n]
		if len(fr) < 14 {
			continue
		}
		var reply []byte
		switch binary.BigEndian.Uint16(fr[12:14]) {
		case unix.ETH_P_ARP:
			reply = g.arpReply(fr, guestIP)
		case unix.ETH_P_IP:
			reply = g.echoReply(fr, guestIP)
		}
		if reply != nil {
			if _, err := g.f.Write(reply); err != nil {
				return
			}
		}
	}
}

// arpReply answers an ARP request for ip.
func (g *guest) arpReply(fr []byte, ip [4]byte) []byte {
	a := fr[14:]
	if len(a) < 28 || binary.BigEndian.Uint16(a[6:8]) != 1 || [4]byte(a[24:28]) != ip {
		return nil
	}
	out := make([]byte, 42)
	copy(out[0:6], a[8:14]) // to the asker
	copy(out[6:12], g.mac)
	binary.BigEndian.PutUint16(out[12:14], unix.ETH_P_ARP)
	r := out[14:]
	copy(r[0:6], a[0:6]) // htype, ptype, hlen, plen
	binary.BigEndian.PutUint16(r[6:8], 2)
	copy(r[8:14], g.mac)
	copy(r[14:18], ip[:])
	copy(r[18:24], a[8:14])
	copy(r[24:28], a[14:18])
	return out
}

// echoReply answers an ICMP echo request to ip.
func (g *guest) echoReply(fr []byte, ip [4]byte) []byte {
	p := fr[14:]
	if len(p) < 20 || p[0]>>4 != 4 {
		return nil
	}
	ihl := int(p[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(p[2:4]))
	if total > len(p) || ihl < 20 || total < ihl+8 || p[9] != unix.IPPROTO_ICMP || [4]byte(p[16:20]) != ip || p[ihl] != 8 {
		return nil
	}
	out := make([]byte, 14+total)
	copy(out[0:6], fr[6:12])
	copy(out[6:12], g.mac)
	binary.BigEndian.PutUint16(out[12:14], unix.ETH_P_IP)
	r := out[14:]
	copy(r, p[:total])
	copy(r[12:16], p[16:20]) // swap addresses
	copy(r[16:20], p[12:16])
	r[8] = 64 // TTL
	r[10], r[11] = 0, 0
	binary.BigEndian.PutUint16(r[10:12], checksum(r[:ihl]))
	icmp := r[ihl:total]
	icmp[0] = 0 // echo reply
	icmp[2], icmp[3] = 0, 0
	binary.BigEndian.PutUint16(icmp[2:4], checksum(icmp))
	return out
}

// checksum is the Internet checksum.
func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// errNoReply says a ping timed out.
var errNoReply = errors.New("no echo reply")

// ping sends ICMP echo requests to dst from the namespace at path until a
// reply from dst arrives or timeout passes.
func ping(path string, dst netip.Addr, timeout time.Duration) error {
	return runInNetns(path, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		id := uint16(os.Getpid()) ^ uint16(time.Now().UnixNano())
		to := &unix.SockaddrInet4{Addr: dst.As4()}
		deadline := time.Now().Add(timeout)
		buf := make([]byte, 1500)
		for seq := uint16(1); time.Now().Before(deadline); seq++ {
			req := make([]byte, 16)
			req[0] = 8
			binary.BigEndian.PutUint16(req[4:6], id)
			binary.BigEndian.PutUint16(req[6:8], seq)
			binary.BigEndian.PutUint16(req[2:4], checksum(req))
			if err := unix.Sendto(fd, req, 0, to); err != nil && !errors.Is(err, unix.EHOSTUNREACH) {
				return fmt.Errorf("send: %w", err)
			}
			next := time.Now().Add(250 * time.Millisecond)
			for time.Now().Before(next) && time.Now().Before(deadline) {
				n, from, err := unix.Recvfrom(fd, buf, 0)
				if err != nil {
					continue // timeout (EAGAIN) or EINTR
				}
				sa, ok := from.(*unix.SockaddrInet4)
				if !ok || sa.Addr != dst.As4() || n < 20 {
					continue
				}
				ihl := int(buf[0]&0x0f) * 4
				if n >= ihl+8 && buf[ihl] == 0 && binary.BigEndian.Uint16(buf[ihl+4:]) == id {
					return nil
				}
			}
		}
		return fmt.Errorf("%w from %s within %v", errNoReply, dst, timeout)
	})
}

// tcpListener listens on port in the namespace at path, accepting and
// closing connections until the test ends.
func tcpListener(t *testing.T, path string, port int) {
	t.Helper()
	var ln net.Listener
	if err := runInNetns(path, func() error {
		var err error
		ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatalf("listen on %d: %v", port, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
}

// dialFrom connects to addr over TCP from the namespace at path.
func dialFrom(path string, addr netip.AddrPort, timeout time.Duration) error {
	return runInNetns(path, func() error {
		c, err := net.DialTimeout("tcp4", addr.String(), timeout)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// sameSet reports whether a and b hold the same strings, in any order.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
