package network

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table this package owns in every sandbox
// namespace (family ip, and family netdev for the TAP's source filter),
// and the stem of its tables in the host namespace, which are scoped by
// bridge (HostTableName, one netdev table per port). Nothing else in
// either namespace is touched.
const TableName = "firecracker-vmm"

// Chain names of the host and sandbox tables.
const (
	chainPostrouting = "postrouting"
	chainPrerouting  = "prerouting"
	chainForward     = "forward"
	chainInput       = "input"
)

// nftConn returns a (non-lasting) nftables connection to namespace ns.
func nftConn(ns netns.NsHandle) (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

// replaceTable queues the atomic replacement of t: add (a no-op when it
// exists), delete, add. The kernel applies the whole batch, chains and rules
// included, in one transaction at Flush.
func replaceTable(c *nftables.Conn, t *nftables.Table) {
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
}

// deleteTable removes table t from namespace ns; a missing table is not an
// error.
func deleteTable(ns netns.NsHandle, t *nftables.Table) error {
	c, err := nftConn(ns)
	if err != nil {
		return err
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("nftables: delete table %s: %w", t.Name, err)
	}
	return nil
}

// applyHostTable builds the host table in namespace ns in one transaction:
//
//	table inet firecracker-vmm-BRIDGE {
//	  chain postrouting { type nat hook postrouting priority srcnat
//	    ip saddr CIDR oifname != BRIDGE masquerade }
//	  chain forward { type filter hook forward priority filter; policy accept
//	    iifname BRIDGE oifname BRIDGE drop     (accept with AllowInterSandbox)
//	    iifname BRIDGE accept
//	    oifname BRIDGE ct state established,related accept
//	    oifname BRIDGE drop }
//	  chain input { type filter hook input priority filter; policy accept
//	    iifname BRIDGE tcp dport PORT drop     (one per DenyTCPPorts) }
//	}
func applyHostTable(ns netns.NsHandle, cfg Config) error {
	c, err := nftConn(ns)
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: HostTableName(cfg.Bridge), Family: nftables.TableFamilyINet}
	replaceTable(c, t)
	accept := nftables.ChainPolicyAccept
	post := c.AddChain(&nftables.Chain{Name: chainPostrouting, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	fwd := c.AddChain(&nftables.Chain{Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	in := c.AddChain(&nftables.Chain{Name: chainInput, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})

	br := cfg.Bridge
	rule := func(ch *nftables.Chain, exprs ...[]expr.Any) {
		var all []expr.Any
		for _, e := range exprs {
			all = append(all, e...)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: all})
	}
	rule(post, matchIPv4(), matchSaddrPrefix(cfg.CIDR), matchIfname(expr.MetaKeyOIFNAME, br, false),
		[]expr.Any{&expr.Masq{}})
	between := verdict(expr.VerdictDrop)
	if cfg.AllowInterSandbox {
		between = verdict(expr.VerdictAccept)
	}
	rule(fwd, matchIfname(expr.MetaKeyIIFNAME, br, true), matchIfname(expr.MetaKeyOIFNAME, br, true), between)
	rule(fwd, matchIfname(expr.MetaKeyIIFNAME, br, true), verdict(expr.VerdictAccept))
	rule(fwd, matchIfname(expr.MetaKeyOIFNAME, br, true), matchCtEstablished(), verdict(expr.VerdictAccept))
	rule(fwd, matchIfname(expr.MetaKeyOIFNAME, br, true), verdict(expr.VerdictDrop))
	for _, p := range cfg.DenyTCPPorts {
		rule(in, matchIfname(expr.MetaKeyIIFNAME, br, true), matchTCPDport(p), verdict(expr.VerdictDrop))
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: install table inet %s: %w", t.Name, err)
	}
	return nil
}

// applySandboxTable builds the NAT between the sandbox's unique address ip
// and the guest's fixed address inside the sandbox namespace ns:
//
//	table ip firecracker-vmm {
//	  chain prerouting  { type nat hook prerouting priority dstnat
//	    ip daddr IP dnat to GuestAddr }
//	  chain postrouting { type nat hook postrouting priority srcnat
//	    ip saddr GuestAddr snat to IP }
//	}
func applySandboxTable(ns netns.NsHandle, ip netip.Addr) error {
	c, err := nftConn(ns)
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
	replaceTable(c, t)
	pre := c.AddChain(&nftables.Chain{Name: chainPrerouting, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	post := c.AddChain(&nftables.Chain{Name: chainPostrouting, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: append(matchAddr(16, ip),
		natTo(expr.NATTypeDestNAT, GuestAddr)...)})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: append(matchAddr(12, GuestAddr),
		natTo(expr.NATTypeSourceNAT, ip)...)})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: install table ip %s: %w", TableName, err)
	}
	return nil
}

// matchIPv4 matches IPv4 packets (needed before IPv4 payload matches in an
// inet table).
func matchIPv4() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

// matchSaddrPrefix matches an IPv4 source address inside p.
func matchSaddrPrefix(p netip.Prefix) []expr.Any {
	mask := netip.PrefixFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), p.Bits()).Masked().Addr().As4()
	network := p.Masked().Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask[:], Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: network[:]},
	}
}

// matchAddr matches the IPv4 header's address at offset (12 source, 16
// destination) against a.
func matchAddr(offset uint32, a netip.Addr) []expr.Any {
	b := a.As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b[:]},
	}
}

// natTo rewrites the address (destination or source, per typ) to a.
func natTo(typ expr.NATType, a netip.Addr) []expr.Any {
	b := a.As4()
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: b[:]},
		&expr.NAT{Type: typ, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
	}
}

// matchIfname matches the input or output interface name (key) being, or
// with eq false not being, name.
func matchIfname(key expr.MetaKey, name string, eq bool) []expr.Any {
	op := expr.CmpOpEq
	if !eq {
		op = expr.CmpOpNeq
	}
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: ifname(name)},
	}
}

// ifname pads an interface name to IFNAMSIZ, as the kernel stores it.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// matchCtEstablished matches ct state established,related.
func matchCtEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// matchTCPDport matches TCP packets to port.
func matchTCPDport(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

// verdict ends a rule with kind.
func verdict(kind expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: kind}} }
