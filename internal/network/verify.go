package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// Verify checks the network of sandbox id, which holds ip, for a VMM that
// is re-adopted after a restart, and repairs what can be rebuilt under the
// running VMM: a missing veth pair (with its address, route and port
// filter), a host veth off the bridge or down, a TAP that is down, the
// namespace's NAT and the source filters. What cannot be rebuilt, because
// the VMM holds it, is errdefs.ErrFailedPrecondition with the reason: the
// namespace is gone (the VMM runs in a namespace nobody can reach), or the
// TAP is gone (the VMM's NIC leads nowhere).
func (m *Manager) Verify(ctx context.Context, sandboxID string, ip netip.Addr) error {
	h, done, err := m.begin(ctx, sandboxID)
	if err != nil {
		return err
	}
	defer done()
	att := m.Describe(sandboxID, ip)
	lost := func(format string, args ...any) error {
		return fmt.Errorf("network: sandbox %s: "+format+": %w", append([]any{sandboxID}, append(args, errdefs.ErrFailedPrecondition)...)...)
	}
	fail := func(step string, err error) error {
		return fmt.Errorf("network: sandbox %s: repair %s: %w", sandboxID, step, err)
	}
	if !isNetnsMount(att.NetnsPath) {
		if legacy := netnsPath(m.cfg.NetnsDir, legacyNetnsName(sandboxID)); isNetnsMount(legacy) {
			m.log.Warn("sandbox network attached by an earlier version: not verified", "sandbox", sandboxID, "netns", legacy)
			return nil
		}
		return lost("its network namespace %s is gone", att.NetnsPath)
	}
	sbNS, err := netns.GetFromPath(att.NetnsPath)
	if err != nil {
		return fail("namespace", err)
	}
	defer sbNS.Close()
	sh, err := netlink.NewHandleAt(sbNS)
	if err != nil {
		return fail("namespace", fmt.Errorf("netlink in sandbox namespace: %w", err))
	}
	defer sh.Close()
	tap, err := sh.LinkByName(TAPName)
	if isLinkNotFound(err) {
		return lost("its TAP %s is gone from %s", TAPName, att.Netns)
	}
	if err != nil {
		return fail("tap", err)
	}
	var repaired []string
	if tap.Attrs().Flags&unix.IFF_UP == 0 {
		if err := sh.LinkSetUp(tap); err != nil {
			return fail("tap", err)
		}
		repaired = append(repaired, "TAP up")
	}

	_, err = h.LinkByName(att.HostVeth)
	switch {
	case isLinkNotFound(err):
		if err := m.rebuildVeth(h, sh, sbNS, att); err != nil {
			return fail("veth", err)
		}
		repaired = append(repaired, "veth pair rebuilt")
	case err != nil:
		return fail("veth", err)
	default:
		if err := m.plugHostVeth(h, att.HostVeth); err != nil {
			return fail("port", err)
		}
	}
	if err := applySourceFilter(m.hostNS, portFilterTable(m.cfg.Bridge, att.HostVeth), att.HostVeth, ip); err != nil {
		return fail("port filter", err)
	}
	if err := applySandboxTable(sbNS, ip); err != nil {
		return fail("nat", err)
	}
	if err := applySourceFilter(sbNS, TableName, TAPName, GuestAddr); err != nil {
		return fail("tap filter", err)
	}
	if len(repaired) > 0 {
		m.log.Warn("sandbox network repaired", "sandbox", sandboxID, "repaired", strings.Join(repaired, ", "))
	}
	return nil
}

// rebuildVeth recreates the veth pair of att, whose host end is missing,
// and configures both ends as Attach does. On failure the pair is deleted.
func (m *Manager) rebuildVeth(h, sh *netlink.Handle, sbNS netns.NsHandle, att Attachment) (err error) {
	// A namespace end left without its peer is in the way.
	if l, lerr := sh.LinkByName(NamespaceIface); lerr == nil {
		if err := sh.LinkDel(l); err != nil {
			return fmt.Errorf("delete the stale %s: %w", NamespaceIface, err)
		}
	}
	if err := addVeth(h, sbNS, att.HostVeth); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, deleteLink(h, att.HostVeth))
		}
	}()
	if err := m.plugHostVeth(h, att.HostVeth); err != nil {
		return err
	}
	return configureSandboxIface(sbNS, netip.PrefixFrom(att.IP, m.cfg.CIDR.Bits()), m.cfg.Gateway)
}
