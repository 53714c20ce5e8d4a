package network

import (
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
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

// broadcast returns the last address of an IPv4 prefix.
func broadcast(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	n |= uint32(1)<<(32-p.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}
