// Package network gives every sandbox its own network namespace, TAP and
// address, joined to a host bridge, in a clone-safe way.
//
// The model (namespaced NAT, as Firecracker documents for clones):
//
//	host namespace                     sandbox namespace vmm-<bridge>.<id>
//	+----------------------------+     +-----------------------------------+
//	| bridge  Gateway/len(CIDR)  |     | eth0  IP/len(CIDR), default via GW|
//	|   +- vh<tag><id> == veth ==|=====|= eth0                             |
//	| table inet firecracker-vmm-|     | table ip firecracker-vmm          |
//	|   <bridge>                 |     |                                   |
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
//
// Sources are checked at both hops (antispoof.go): in the sandbox namespace
// the TAP accepts only IPv4 from GuestAddr and ARP for it, and on the host
// each bridge port (host veth) only IPv4 from the sandbox's leased address
// and ARP for it; every other frame is dropped on ingress.
package network

import (
	"net/netip"
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
	// NetnsPrefix prefixes every namespace this package creates (see
	// NetnsName).
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
