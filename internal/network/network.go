// Package network gives every sandbox its own network namespace, TAP and
// address, joined to a host bridge, in a clone-safe way.
//
// The model (namespaced NAT, as Firecracker documents for clones):
//
//	host namespace                     sandbox namespace vmm-<id>
//	+----------------------------+     +-----------------------------------+
//	| bridge  Gateway/len(CIDR)  |     | eth0  IP/len(CIDR), default via GW|
//	|   +- vh<id> ==== veth =====|=====|= eth0                             |
//	| table inet firecracker-vmm |     | table ip firecracker-vmm          |
//	|   masquerade CIDR egress   |     |   ip daddr IP dnat to 172.16.0.2  |
//	|   no sandbox<->sandbox     |     |   ip saddr 172.16.0.2 snat to IP  |
//	|   drop TCP to deny ports   |     | ip_forward=1                      |
//	| ip_forward=1               |     | tap0  172.16.0.1/30  <- VMM opens |
//	+----------------------------+     +---|-------------------------------+
//	                                       |
//	                                     guest eth0 172.16.0.2/30, gw .1
//
// Every guest has the same address (GuestAddr) behind the same TAP
// (TAPName); only the namespace differs. A sandbox restored from a
// checkpoint therefore finds the network its guest remembers, and several
// copies of one guest can run at once, each reachable at its own IP from
// CIDR. The VMM is started inside the sandbox namespace (Attachment.NetnsPath).
//
// Host bridge ports are isolated (IFLA_BRPORT_ISOLATED) unless
// AllowInterSandbox, so sandboxes cannot reach each other; the host table
// also drops routed bridge-to-bridge traffic and TCP to DenyTCPPorts
// arriving from the bridge.
package network

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/network/ipam"
)

// The guest side of every sandbox is identical, so that a restored copy of a
// sandbox finds, inside its namespace, the TAP name and addresses its guest
// had when the checkpoint was taken.
const (
	// TAPName is the TAP device inside every sandbox namespace.
	TAPName = "tap0"
	// GuestIface is the interface name the guest kernel configures (ip=).
	GuestIface = "eth0"
	// NICID is the Firecracker iface_id of the sandbox's NIC.
	NICID = "eth0"
	// NamespaceIface is the name of the veth end inside the namespace.
	NamespaceIface = "eth0"
	// NetnsPrefix prefixes every namespace this package creates.
	NetnsPrefix = "vmm-"
	// HostVethPrefix prefixes every host-side veth this package creates.
	HostVethPrefix = "vh"
	// DefaultNetnsDir is where namespaces are bind-mounted by default (as
	// iproute2 does, so `ip netns` sees them).
	DefaultNetnsDir = "/run/netns"
)

var (
	// TAPAddr is the TAP's address inside every namespace (the guest's gateway).
	TAPAddr = netip.MustParseAddr("172.16.0.1")
	// GuestAddr is the guest's address inside every namespace.
	GuestAddr = netip.MustParseAddr("172.16.0.2")
	// GuestPrefix is the /30 that holds TAPAddr and GuestAddr.
	GuestPrefix = netip.MustParsePrefix("172.16.0.0/30")
)

// Config configures a Manager.
type Config struct {
	// Bridge is the host bridge name (≤ 15 bytes). Required.
	Bridge string
	// CIDR is the sandboxes' network; each sandbox gets one address. Must not
	// overlap GuestPrefix. Required.
	CIDR netip.Prefix
	// Gateway is the bridge's address inside CIDR. Required.
	Gateway netip.Addr
	// DNS servers handed to guests through the ip= boot argument (at most 2 used).
	DNS []netip.Addr
	// AllowInterSandbox lets sandboxes reach each other (default: isolated).
	AllowInterSandbox bool
	// DenyTCPPorts are host TCP ports sandboxes must not reach (the daemon's
	// own TCP API).
	DenyTCPPorts []uint16
	// NetnsDir is where named namespaces are bind-mounted (default
	// DefaultNetnsDir). It is made a shared mount point, as iproute2 does.
	NetnsDir string
	// HostNetns is the path of the network namespace that plays the host
	// (bridge, host table, forwarding). Empty: the network namespace of the
	// thread that calls New, which for a daemon is its own namespace. Tests
	// point it at a throwaway namespace.
	HostNetns string
	// TAPOwner and TAPGroup, when > 0, become the owner uid and group gid
	// of each sandbox's TAP, so that a Firecracker dropped to them by the
	// jailer may attach it. 0 or -1 (the default) leaves the TAP to root.
	TAPOwner int
	TAPGroup int
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// Attachment is one sandbox's network.
type Attachment struct {
	// SandboxID owns the attachment.
	SandboxID string
	// Netns is the namespace name; NetnsPath its bind mount (what the VMM
	// joins).
	Netns     string
	NetnsPath string
	// TAP is the TAP inside the namespace (always TAPName).
	TAP string
	// HostVeth is the veth end on the bridge.
	HostVeth string
	// IP is the sandbox's unique address in CIDR; PrefixLen is CIDR's length.
	IP        netip.Addr
	PrefixLen int
	// Gateway is the bridge address.
	Gateway netip.Addr
	// DNS servers.
	DNS []netip.Addr
	// GuestIP is the address configured inside the guest (GuestAddr).
	GuestIP netip.Addr
	// GuestMAC is the guest NIC's MAC address.
	GuestMAC string
	// BootArg is the kernel ip= argument that configures the guest.
	BootArg string
}

// maxSandboxID bounds sandbox ids; ids up to 13 bytes name the host veth
// directly (HostVethPrefix+id fits IFNAMSIZ), longer ones through a hash.
const maxSandboxID = 64

// Manager prepares the host and attaches sandboxes. Its methods are safe for
// concurrent use; operations on one sandbox id are serialized.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	pool   *ipam.Pool
	hostNS netns.NsHandle // owned; closed by Close

	// mu guards the fields that follow.
	mu       sync.Mutex
	busy     map[string]chan struct{} // sandbox id → closed when its operation ends
	dirReady bool                     // NetnsDir prepared
	closed   bool

	// failAt, when set (tests only), makes Attach fail at the named step.
	failAt string
}

// New validates cfg and returns a Manager. It opens the host namespace
// (Config.HostNetns, or the calling thread's); Close releases it. Invalid
// configuration is errdefs.ErrInvalidArgument.
func New(cfg Config) (*Manager, error) {
	if err := validate(&cfg); err != nil {
		return nil, err
	}
	pool, err := ipam.New(cfg.CIDR, cfg.Gateway)
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	var host netns.NsHandle
	if cfg.HostNetns == "" {
		host, err = netns.Get()
	} else {
		host, err = netns.GetFromPath(cfg.HostNetns)
	}
	if err != nil {
		return nil, fmt.Errorf("network: open host network namespace %q: %w", cfg.HostNetns, err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	cfg.DNS = append([]netip.Addr(nil), cfg.DNS...)
	cfg.DenyTCPPorts = append([]uint16(nil), cfg.DenyTCPPorts...)
	return &Manager{
		cfg:    cfg,
		log:    logger.With("component", "network"),
		pool:   pool,
		hostNS: host,
		busy:   map[string]chan struct{}{},
	}, nil
}

// validate checks cfg and fills in defaults.
func validate(cfg *Config) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("network: "+format+": %w", append(args, errdefs.ErrInvalidArgument)...)
	}
	if !validIfname(cfg.Bridge) {
		return bad("bridge %q is not a valid interface name (1-15 bytes, no '/', ':' or white space)", cfg.Bridge)
	}
	p := cfg.CIDR
	switch {
	case !p.IsValid():
		return bad("cidr is not set")
	case !p.Addr().Is4():
		return bad("cidr %s: only IPv4 is supported", p)
	case p != p.Masked():
		return bad("cidr %s has host bits set (want %s)", p, p.Masked())
	case p.Bits() > 30 || p.Bits() < 1:
		return bad("cidr %s: the prefix length must be between 1 and 30", p)
	case p.Overlaps(GuestPrefix):
		return bad("cidr %s overlaps the guest-side network %s", p, GuestPrefix)
	}
	gw := cfg.Gateway
	switch {
	case !gw.IsValid() || !gw.Is4():
		return bad("gateway %v is not an IPv4 address", gw)
	case !p.Contains(gw):
		return bad("gateway %s is not inside cidr %s", gw, p)
	case gw == p.Addr() || gw == broadcast(p):
		return bad("gateway %s is the network or broadcast address of %s", gw, p)
	}
	for i, d := range cfg.DNS {
		if !d.IsValid() || !d.Is4() {
			return bad("dns[%d] %v is not an IPv4 address", i, d)
		}
	}
	for i, port := range cfg.DenyTCPPorts {
		if port == 0 {
			return bad("deny_tcp_ports[%d] is 0", i)
		}
	}
	if cfg.NetnsDir == "" {
		cfg.NetnsDir = DefaultNetnsDir
	}
	if !filepath.IsAbs(cfg.NetnsDir) {
		return bad("netns dir %q is not an absolute path", cfg.NetnsDir)
	}
	cfg.NetnsDir = filepath.Clean(cfg.NetnsDir)
	return nil
}

// validIfname reports whether name is a usable interface name.
func validIfname(name string) bool {
	return name != "" && len(name) < unix.IFNAMSIZ && name != "." && name != ".." &&
		!strings.ContainsAny(name, "/: \t\n\r\x00")
}

// validSandboxID reports whether id can name a namespace and a veth.
func validSandboxID(id string) bool {
	if id == "" || len(id) > maxSandboxID {
		return false
	}
	for _, c := range []byte(id) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// broadcast returns the last address of an IPv4 prefix.
func broadcast(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	n |= uint32(1)<<(32-p.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

// HostVethName returns the name of the host-side veth of sandbox id:
// HostVethPrefix+id when it fits IFNAMSIZ, else HostVethPrefix and a hash.
func HostVethName(id string) string {
	if len(HostVethPrefix)+len(id) < unix.IFNAMSIZ {
		return HostVethPrefix + id
	}
	// FNV-1a, 64 bits, as 13 hex digits: collisions between live
	// sandboxes are negligible, and a collision fails Attach cleanly.
	h := uint64(14695981039346656037)
	for _, c := range []byte(id) {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return fmt.Sprintf("%s%013x", HostVethPrefix, h&(1<<52-1))
}

// Close releases the host namespace handle. Attachments and host setup stay.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	return m.hostNS.Close()
}

// hostHandle opens a netlink handle in the host namespace.
func (m *Manager) hostHandle() (*netlink.Handle, error) {
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("network: manager is closed: %w", errdefs.ErrFailedPrecondition)
	}
	h, err := netlink.NewHandleAt(m.hostNS)
	if err != nil {
		return nil, fmt.Errorf("network: netlink in host namespace: %w", err)
	}
	return h, nil
}

// Setup prepares the host once and idempotently: bridge with the gateway
// address, IP forwarding, and the nftables table of the daemon.
func (m *Manager) Setup(ctx context.Context) error {
	h, err := m.hostHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	if err := runInNS(m.hostNS, func() error { return writeSysctl(ipForwardSysctl, "1") }); err != nil {
		return fmt.Errorf("network: enable IP forwarding: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("network: setup: %w", err)
	}
	br, err := m.ensureBridge(h)
	if err != nil {
		return err
	}
	gw := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(m.cfg.Gateway, m.cfg.CIDR.Bits()))}
	if err := h.AddrReplace(br, gw); err != nil {
		return fmt.Errorf("network: address %s on bridge %s: %w", gw.IPNet, m.cfg.Bridge, err)
	}
	// A bridge without an address of its own takes the lowest MAC of its
	// ports, so the sandboxes' gateway MAC would change as sandboxes come
	// and go. Pin it.
	if mac := bridgeMAC(m.cfg.Gateway); !bytes.Equal(br.Attrs().HardwareAddr, mac) {
		if err := h.LinkSetHardwareAddr(br, mac); err != nil {
			return fmt.Errorf("network: set MAC %s on bridge %s: %w", mac, m.cfg.Bridge, err)
		}
	}
	if err := h.LinkSetUp(br); err != nil {
		return fmt.Errorf("network: bring bridge %s up: %w", m.cfg.Bridge, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("network: setup: %w", err)
	}
	if err := applyHostTable(m.hostNS, m.cfg); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	m.log.Debug("host network ready", "bridge", m.cfg.Bridge, "cidr", m.cfg.CIDR, "gateway", m.cfg.Gateway)
	return nil
}

// ensureBridge returns the host bridge, creating it if needed.
func (m *Manager) ensureBridge(h *netlink.Handle) (netlink.Link, error) {
	name := m.cfg.Bridge
	l, err := h.LinkByName(name)
	if isLinkNotFound(err) {
		err = h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}})
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("network: create bridge %s: %w", name, err)
		}
		l, err = h.LinkByName(name)
	}
	if err != nil {
		return nil, fmt.Errorf("network: bridge %s: %w", name, err)
	}
	if l.Type() != "bridge" {
		return nil, fmt.Errorf("network: %s exists and is a %s, not a bridge: %w", name, l.Type(), errdefs.ErrFailedPrecondition)
	}
	return l, nil
}

// Describe returns the Attachment of sandbox id holding address ip, as
// Attach builds it, without touching the system (for callers that recover
// sandboxes after a restart).
func (m *Manager) Describe(sandboxID string, ip netip.Addr) Attachment {
	name := NetnsPrefix + sandboxID
	dns := m.cfg.DNS
	if len(dns) > 2 {
		dns = dns[:2]
	}
	return Attachment{
		SandboxID: sandboxID,
		Netns:     name,
		NetnsPath: netnsPath(m.cfg.NetnsDir, name),
		TAP:       TAPName,
		HostVeth:  HostVethName(sandboxID),
		IP:        ip,
		PrefixLen: m.cfg.CIDR.Bits(),
		Gateway:   m.cfg.Gateway,
		DNS:       append([]netip.Addr(nil), dns...),
		GuestIP:   GuestAddr,
		GuestMAC:  GuestMAC(ip),
		BootArg:   BootArg(dns),
	}
}

// bridgeMAC returns the bridge's fixed MAC, derived from the gateway
// address: 02:00 (locally administered) followed by the four address bytes.
func bridgeMAC(gw netip.Addr) net.HardwareAddr {
	b := gw.As4()
	return net.HardwareAddr{0x02, 0x00, b[0], b[1], b[2], b[3]}
}

// ListNetns returns the ids of the sandboxes that have a namespace under
// NetnsDir, attached by this manager or left by an earlier run (a caller
// recovering after a restart Detaches those it does not know).
func (m *Manager) ListNetns() ([]string, error) {
	entries, err := os.ReadDir(m.cfg.NetnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("network: list %s: %w", m.cfg.NetnsDir, err)
	}
	var ids []string
	for _, e := range entries {
		if id, ok := strings.CutPrefix(e.Name(), NetnsPrefix); ok && validSandboxID(id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// GuestMAC returns the stable guest MAC for a sandbox address:
// 06:00 followed by the four address bytes (06:00:ac:14:00:05 for 172.20.0.5).
func GuestMAC(ip netip.Addr) string {
	b := ip.As4()
	return fmt.Sprintf("06:00:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}

// BootArg returns the kernel ip= argument that configures the guest side of
// every sandbox: GuestAddr, gateway TAPAddr, GuestPrefix's netmask, device
// GuestIface, no autoconfiguration, and up to two DNS servers.
func BootArg(dns []netip.Addr) string {
	mask := net.IP(net.CIDRMask(GuestPrefix.Bits(), 32)).String()
	s := fmt.Sprintf("ip=%s::%s:%s::%s:off", GuestAddr, TAPAddr, mask, GuestIface)
	for i, d := range dns {
		if i == 2 {
			break
		}
		s += ":" + d.String()
	}
	return s
}

// Reserve records that sandbox id holds ip, so that it is not handed out
// again (used when recovering sandboxes after a restart). It does not build
// anything; Detach releases it like any lease.
func (m *Manager) Reserve(sandboxID string, ip netip.Addr) error {
	if !validSandboxID(sandboxID) {
		return fmt.Errorf("network: invalid sandbox id %q: %w", sandboxID, errdefs.ErrInvalidArgument)
	}
	if err := m.pool.Reserve(ip, sandboxID); err != nil {
		return fmt.Errorf("network: sandbox %s: %w", sandboxID, err)
	}
	return nil
}

// lock serializes operations on one sandbox id. It returns the unlock
// function, or ctx's error.
func (m *Manager) lock(ctx context.Context, id string) (func(), error) {
	for {
		m.mu.Lock()
		ch, held := m.busy[id]
		if !held {
			ch = make(chan struct{})
			m.busy[id] = ch
			m.mu.Unlock()
			return func() {
				m.mu.Lock()
				delete(m.busy, id)
				m.mu.Unlock()
				close(ch)
			}, nil
		}
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("network: sandbox %s: %w", id, ctx.Err())
		}
	}
}

// Attach steps, in order; failAt names them in tests.
const (
	stepNetns   = "netns"
	stepInit    = "netns-init"
	stepVeth    = "veth"
	stepPort    = "port"
	stepAddress = "address"
	stepNAT     = "nat"
)

// Attach leases an address and builds the sandbox's namespace, veth, TAP and
// NAT. On failure nothing is left behind. Exhaustion → errdefs.ErrResourceExhausted.
func (m *Manager) Attach(ctx context.Context, sandboxID string) (att Attachment, err error) {
	if !validSandboxID(sandboxID) {
		return Attachment{}, fmt.Errorf("network: invalid sandbox id %q: %w", sandboxID, errdefs.ErrInvalidArgument)
	}
	unlock, err := m.lock(ctx, sandboxID)
	if err != nil {
		return Attachment{}, err
	}
	defer unlock()
	h, err := m.hostHandle()
	if err != nil {
		return Attachment{}, err
	}
	defer h.Close()

	ip, err := m.pool.Allocate(sandboxID)
	if err != nil {
		return Attachment{}, fmt.Errorf("network: sandbox %s: %w", sandboxID, err)
	}
	att = m.Describe(sandboxID, ip)

	// undo holds the steps to take back, run in reverse order on failure.
	var undo []func() error
	defer func() {
		if err == nil {
			return
		}
		var errs []error
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](); uerr != nil {
				errs = append(errs, uerr)
			}
		}
		m.pool.Release(sandboxID)
		if uerr := errors.Join(errs...); uerr != nil {
			m.log.Error("network: rollback after failed attach incomplete", "sandbox", sandboxID, "error", uerr)
			err = fmt.Errorf("%w (rollback: %v)", err, uerr)
		}
		att = Attachment{}
	}()
	fail := func(step string, e error) error {
		return fmt.Errorf("network: sandbox %s: %s: %w", sandboxID, step, e)
	}
	check := func(step string) error {
		if err := ctx.Err(); err != nil {
			return fail(step, err)
		}
		if m.failAt == step {
			return fail(step, errors.New("injected failure"))
		}
		return nil
	}

	// 1. The namespace, with lo, the TAP and forwarding inside.
	if err := check(stepNetns); err != nil {
		return att, err
	}
	if err := m.ensureNetnsDir(); err != nil {
		return att, fail(stepNetns, err)
	}
	init := func() error {
		if err := initSandboxNetns(m.cfg.TAPOwner, m.cfg.TAPGroup); err != nil {
			return err
		}
		return check(stepInit)
	}
	if err := createNetns(att.NetnsPath, init); err != nil {
		if errors.Is(err, errNetnsExists) { // not ours: leave it
			return att, fail(stepNetns, fmt.Errorf("%w: %w", err, errdefs.ErrAlreadyExists))
		}
		if !isNetnsMount(att.NetnsPath) {
			// The mount point file is ours (O_EXCL) even if the mount failed.
			_ = os.Remove(att.NetnsPath)
			return att, fail(stepNetns, err)
		}
		undo = append(undo, func() error { return deleteNetns(att.NetnsPath) })
		return att, fail(stepNetns, err)
	}
	undo = append(undo, func() error { return deleteNetns(att.NetnsPath) })
	sbNS, err := netns.GetFromPath(att.NetnsPath)
	if err != nil {
		return att, fail(stepNetns, err)
	}
	defer sbNS.Close()

	// 2. The veth pair: host end here, peer created directly in the
	// namespace under its final name.
	if err := check(stepVeth); err != nil {
		return att, err
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: att.HostVeth},
		PeerName:      NamespaceIface,
		PeerNamespace: netlink.NsFd(sbNS),
	}
	if err := h.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			err = fmt.Errorf("host interface %s already exists: %w", att.HostVeth, errdefs.ErrAlreadyExists)
		}
		return att, fail(stepVeth, err)
	}
	undo = append(undo, func() error { return deleteLink(h, att.HostVeth) })

	// 3. The host end on the bridge, isolated, up.
	if err := check(stepPort); err != nil {
		return att, err
	}
	if err := m.plugHostVeth(h, att.HostVeth); err != nil {
		return att, fail(stepPort, err)
	}

	// 4. Address and default route inside the namespace.
	if err := check(stepAddress); err != nil {
		return att, err
	}
	if err := configureSandboxIface(sbNS, netip.PrefixFrom(ip, m.cfg.CIDR.Bits()), m.cfg.Gateway); err != nil {
		return att, fail(stepAddress, err)
	}

	// 5. NAT between the unique address and the guest's.
	if err := check(stepNAT); err != nil {
		return att, err
	}
	if err := applySandboxTable(sbNS, ip); err != nil {
		return att, fail(stepNAT, err)
	}
	m.log.Debug("sandbox network attached", "sandbox", sandboxID, "ip", ip, "netns", att.NetnsPath)
	return att, nil
}

// ensureNetnsDir prepares NetnsDir once per manager.
func (m *Manager) ensureNetnsDir() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dirReady {
		return nil
	}
	if err := prepareNetnsDir(m.cfg.NetnsDir); err != nil {
		return err
	}
	m.dirReady = true
	return nil
}

// initSandboxNetns runs inside a new sandbox namespace: lo up, the TAP with
// TAPAddr up (owned by owner/group when > 0), IPv4 forwarding on.
func initSandboxNetns(owner, group int) error {
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("lo: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	if err := createTAP(TAPName, owner, group); err != nil {
		return err
	}
	tap, err := h.LinkByName(TAPName)
	if err != nil {
		return fmt.Errorf("%s: %w", TAPName, err)
	}
	addr := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(TAPAddr, GuestPrefix.Bits()))}
	if err := h.AddrAdd(tap, addr); err != nil {
		return fmt.Errorf("address %s on %s: %w", addr.IPNet, TAPName, err)
	}
	if err := h.LinkSetUp(tap); err != nil {
		return fmt.Errorf("bring %s up: %w", TAPName, err)
	}
	if err := writeSysctl(ipForwardSysctl, "1"); err != nil {
		return err
	}
	return nil
}

// plugHostVeth puts the host veth on the bridge, isolates it unless
// AllowInterSandbox, and brings it up.
func (m *Manager) plugHostVeth(h *netlink.Handle, name string) error {
	br, err := h.LinkByName(m.cfg.Bridge)
	if err != nil {
		if isLinkNotFound(err) {
			return fmt.Errorf("bridge %s does not exist (was Setup run?): %w", m.cfg.Bridge, errdefs.ErrFailedPrecondition)
		}
		return fmt.Errorf("bridge %s: %w", m.cfg.Bridge, err)
	}
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := h.LinkSetMaster(l, br); err != nil {
		return fmt.Errorf("attach %s to bridge %s: %w", name, m.cfg.Bridge, err)
	}
	if !m.cfg.AllowInterSandbox {
		if err := h.LinkSetIsolated(l, true); err != nil {
			return fmt.Errorf("isolate bridge port %s: %w", name, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	return nil
}

// configureSandboxIface gives the namespace's veth end its address, brings
// it up and routes everything via gw.
func configureSandboxIface(ns netns.NsHandle, addr netip.Prefix, gw netip.Addr) error {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in sandbox namespace: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByName(NamespaceIface)
	if err != nil {
		return fmt.Errorf("%s: %w", NamespaceIface, err)
	}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("address %s on %s: %w", addr, NamespaceIface, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring %s up: %w", NamespaceIface, err)
	}
	route := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.IP(gw.AsSlice())}
	if err := h.RouteAdd(route); err != nil {
		return fmt.Errorf("default route via %s: %w", gw, err)
	}
	return nil
}

// Detach removes everything Attach built and releases the lease. Missing
// pieces are not an error (idempotent).
func (m *Manager) Detach(ctx context.Context, sandboxID string) error {
	if !validSandboxID(sandboxID) {
		return fmt.Errorf("network: invalid sandbox id %q: %w", sandboxID, errdefs.ErrInvalidArgument)
	}
	unlock, err := m.lock(ctx, sandboxID)
	if err != nil {
		return err
	}
	defer unlock()
	h, err := m.hostHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	var errs []error
	// The host veth first: deleting it removes its peer synchronously,
	// while the namespace itself is cleaned up by the kernel later.
	if err := deleteLink(h, HostVethName(sandboxID)); err != nil {
		errs = append(errs, err)
	}
	if err := deleteNetns(netnsPath(m.cfg.NetnsDir, NetnsPrefix+sandboxID)); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		// Keep the lease: the address may still be in use.
		return fmt.Errorf("network: detach sandbox %s: %w", sandboxID, errors.Join(errs...))
	}
	if ip, ok := m.pool.Release(sandboxID); ok {
		m.log.Debug("sandbox network detached", "sandbox", sandboxID, "ip", ip)
	}
	return nil
}

// deleteLink deletes the veth called name; a missing one is not an error,
// and an interface of another type is left alone.
func deleteLink(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if isLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if l.Type() != "veth" {
		return nil
	}
	if err := h.LinkDel(l); err != nil && !isLinkNotFound(err) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// isLinkNotFound reports whether err says the link does not exist.
func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// ipNet converts a prefix (address with length) to *net.IPNet, keeping the
// address's host bits.
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), 32)}
}
