package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// Attach steps, in order; failAt names them in tests.
const (
	stepNetns   = "netns"
	stepInit    = "netns-init"
	stepVeth    = "veth"
	stepFilter  = "filter"
	stepPort    = "port"
	stepAddress = "address"
	stepNAT     = "nat"
)

// Attach leases an address and builds the sandbox's namespace, veth, TAP,
// NAT and source filters (the guest may only send as GuestAddr from the TAP,
// the sandbox only as its leased address into the bridge). On failure
// nothing is left behind. Exhaustion → errdefs.ErrResourceExhausted.
func (m *Manager) Attach(ctx context.Context, sandboxID string) (att Attachment, err error) {
	h, done, err := m.begin(ctx, sandboxID)
	if err != nil {
		return Attachment{}, err
	}
	defer done()

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
	if err := addVeth(h, sbNS, att.HostVeth); err != nil {
		return att, fail(stepVeth, err)
	}
	undo = append(undo, func() error { return deleteLink(h, att.HostVeth) })

	// 3. The host end accepts only the sandbox's own address, before it
	// joins the bridge.
	if err := check(stepFilter); err != nil {
		return att, err
	}
	portTable := portFilterTable(m.cfg.Bridge, att.HostVeth)
	undo = append(undo, func() error { return deleteSourceFilter(m.hostNS, portTable) })
	if err := applySourceFilter(m.hostNS, portTable, att.HostVeth, ip); err != nil {
		return att, fail(stepFilter, err)
	}

	// 4. The host end on the bridge, isolated, up.
	if err := check(stepPort); err != nil {
		return att, err
	}
	if err := m.plugHostVeth(h, att.HostVeth); err != nil {
		return att, fail(stepPort, err)
	}

	// 5. Address and default route inside the namespace.
	if err := check(stepAddress); err != nil {
		return att, err
	}
	if err := configureSandboxIface(sbNS, netip.PrefixFrom(ip, m.cfg.CIDR.Bits()), m.cfg.Gateway); err != nil {
		return att, fail(stepAddress, err)
	}

	// 6. NAT between the unique address and the guest's, and the guest
	// held to its own address on the TAP.
	if err := check(stepNAT); err != nil {
		return att, err
	}
	if err := applySandboxTable(sbNS, ip); err != nil {
		return att, fail(stepNAT, err)
	}
	if err := applySourceFilter(sbNS, TableName, TAPName, GuestAddr); err != nil {
		return att, fail(stepNAT, err)
	}
	m.log.Debug("sandbox network attached", "sandbox", sandboxID, "ip", ip, "netns", att.NetnsPath)
	return att, nil
}

// addVeth creates the veth pair whose host end is name, its peer created
// directly in namespace sbNS under its final name, NamespaceIface. A taken
// host name is errdefs.ErrAlreadyExists.
func addVeth(h *netlink.Handle, sbNS netns.NsHandle, name string) error {
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: name},
		PeerName:      NamespaceIface,
		PeerNamespace: netlink.NsFd(sbNS),
	}
	if err := h.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("host interface %s already exists: %w", name, errdefs.ErrAlreadyExists)
		}
		return err
	}
	return nil
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
	h, done, err := m.begin(ctx, sandboxID)
	if err != nil {
		return err
	}
	defer done()
	var errs []error
	// The host veth first: deleting it removes its peer synchronously,
	// while the namespace itself is cleaned up by the kernel later.
	veth := HostVethName(m.cfg.Bridge, sandboxID)
	if err := deleteLink(h, veth); err != nil {
		errs = append(errs, err)
	}
	if err := deleteSourceFilter(m.hostNS, portFilterTable(m.cfg.Bridge, veth)); err != nil {
		errs = append(errs, err)
	}
	if err := deleteNetns(netnsPath(m.cfg.NetnsDir, NetnsName(m.cfg.Bridge, sandboxID))); err != nil {
		errs = append(errs, err)
	}
	// What an earlier version attached under unscoped names (legacy.go).
	if err := deleteLink(h, legacyHostVeth(sandboxID)); err != nil {
		errs = append(errs, err)
	}
	if err := deleteNetns(netnsPath(m.cfg.NetnsDir, legacyNetnsName(sandboxID))); err != nil {
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
