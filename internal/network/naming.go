package network

import (
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// maxSandboxID bounds sandbox ids; ids up to maxVethID bytes name the host
// veth directly, longer ones through a hash.
const maxSandboxID = 64

// maxVethID is the longest sandbox id a host veth name holds as is:
// HostVethPrefix, the 4-digit daemon tag and the id fit IFNAMSIZ.
const maxVethID = unix.IFNAMSIZ - 1 - len(HostVethPrefix) - 4

// The names of everything a Manager creates on the host are scoped by its
// bridge, which no two daemons on one host share: its namespaces
// (NetnsName), host veths (HostVethName) and nftables tables
// (HostTableName, the port tables). A daemon therefore never lists,
// replaces or deletes another daemon's objects. Sandbox ids cannot hold
// '.', so the namespaces of a bridge "br" never match the prefix of those
// of a bridge "br.x".

// NetnsName returns the namespace name of sandbox id under bridge:
// NetnsPrefix, the bridge, '.', the id.
func NetnsName(bridge, id string) string { return netnsScope(bridge) + id }

// netnsScope is the prefix of the namespace names of bridge's sandboxes.
func netnsScope(bridge string) string { return NetnsPrefix + bridge + "." }

// HostTableName returns the name of the host table (family inet) of the
// daemon whose bridge is bridge.
func HostTableName(bridge string) string { return TableName + "-" + bridge }

// portFilterTable names the host table (family netdev) that filters the
// sources arriving from the bridge port veth of bridge.
func portFilterTable(bridge, veth string) string { return TableName + "-" + bridge + "-" + veth }

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

// HostVethName returns the name of the host-side veth of sandbox id under
// bridge: HostVethPrefix, a 4-hex-digit tag of the bridge, and the id when
// it fits IFNAMSIZ (maxVethID bytes), else a 9-hex-digit hash of it.
// Collisions (of tags and hashes at once) are negligible, and a collision
// fails Attach cleanly.
func HostVethName(bridge, id string) string {
	tag := fmt.Sprintf("%04x", fnv1a(bridge)&0xffff)
	if len(id) <= maxVethID {
		return HostVethPrefix + tag + id
	}
	return fmt.Sprintf("%s%s%09x", HostVethPrefix, tag, fnv1a(id)&(1<<36-1))
}

// fnv1a is the 64-bit FNV-1a hash of s.
func fnv1a(s string) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range []byte(s) {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
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
