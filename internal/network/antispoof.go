package network

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// chainIngress is the chain of a source filter table.
const chainIngress = "ingress"

// applySourceFilter installs, in namespace ns, the table netdev name whose
// chain on dev's ingress lets through only what addr may send:
//
//	table netdev NAME {
//	  chain ingress { type filter hook ingress device DEV priority filter; policy drop
//	    meta protocol ip ip saddr ADDR accept
//	    meta protocol arp arp saddr ip ADDR accept }
//	}
//
// Everything else that arrives on dev (another source address, ARP for
// another address, any other protocol) is dropped before the stack or the
// bridge sees it. Inside a sandbox namespace it guards the TAP (the guest
// may only use GuestAddr); on the host it guards each bridge port (the
// sandbox may only use its leased address). The table is replaced
// atomically if it exists.
func applySourceFilter(ns netns.NsHandle, name, dev string, addr netip.Addr) error {
	c, err := nftConn(ns)
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: name, Family: nftables.TableFamilyNetdev}
	replaceTable(c, t)
	drop := nftables.ChainPolicyDrop
	ch := c.AddChain(&nftables.Chain{Name: chainIngress, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookIngress, Priority: nftables.ChainPriorityFilter, Device: dev, Policy: &drop})
	a := addr.As4()
	// The IPv4 source address is at offset 12 of the IP header; the ARP
	// sender's protocol address at offset 14 of an Ethernet/IPv4 ARP
	// packet (after htype, ptype, hlen, plen, oper and the sender's MAC).
	for _, m := range []struct {
		proto  uint16
		offset uint32
	}{{unix.ETH_P_IP, 12}, {unix.ETH_P_ARP, 14}} {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(m.proto)},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: m.offset, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
			&expr.Verdict{Kind: expr.VerdictAccept},
		}})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: install table netdev %s on %s: %w", name, dev, err)
	}
	return nil
}

// deleteSourceFilter removes the table netdev name from namespace ns; a
// missing table is not an error.
func deleteSourceFilter(ns netns.NsHandle, name string) error {
	return deleteTable(ns, &nftables.Table{Name: name, Family: nftables.TableFamilyNetdev})
}
