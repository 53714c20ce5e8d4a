package network

import (
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// maxSandboxID bounds sandbox ids; ids up to 13 bytes name the host veth
// directly (HostVethPrefix+id fits IFNAMSIZ), longer ones through a hash.
const maxSandboxID = 64

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
