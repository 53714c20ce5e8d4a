package network

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// Describe returns the Attachment of sandbox id holding address ip, as
// Attach builds it, without touching the system (for callers that recover
// sandboxes after a restart).
func (m *Manager) Describe(sandboxID string, ip netip.Addr) Attachment {
	name := NetnsName(m.cfg.Bridge, sandboxID)
	dns := m.cfg.DNS
	if len(dns) > 2 {
		dns = dns[:2]
	}
	return Attachment{
		SandboxID: sandboxID,
		Netns:     name,
		NetnsPath: netnsPath(m.cfg.NetnsDir, name),
		TAP:       TAPName,
		HostVeth:  HostVethName(m.cfg.Bridge, sandboxID),
		IP:        ip,
		PrefixLen: m.cfg.CIDR.Bits(),
		Gateway:   m.cfg.Gateway,
		DNS:       append([]netip.Addr(nil), dns...),
		GuestIP:   GuestAddr,
		GuestMAC:  GuestMAC(ip),
		BootArg:   BootArg(dns),
	}
}

// ListNetns returns the ids of the sandboxes that have a namespace of this
// manager's bridge under NetnsDir, attached by this manager or left by an
// earlier run (a caller recovering after a restart Detaches those it does
// not know). Namespaces of other bridges (other daemons) are not listed.
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
		if id, ok := strings.CutPrefix(e.Name(), netnsScope(m.cfg.Bridge)); ok && validSandboxID(id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
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
