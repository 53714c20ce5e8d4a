package network

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

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

// bridgeMAC returns the bridge's fixed MAC, derived from the gateway
// address: 02:00 (locally administered) followed by the four address bytes.
func bridgeMAC(gw netip.Addr) net.HardwareAddr {
	b := gw.As4()
	return net.HardwareAddr{0x02, 0x00, b[0], b[1], b[2], b[3]}
}
