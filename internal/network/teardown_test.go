package network

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"
)

// teardown removes what m.Setup made: the host table and the bridge. Sandbox
// attachments are not touched (Detach them first). Missing pieces are not
// an error. The daemon has no such step (host setup outlives it); the tests
// clean their throwaway host namespaces with it.
func teardown(ctx context.Context, m *Manager) error {
	h, err := m.hostHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	var errs []error
	if err := deleteHostTable(m.hostNS, m.cfg.Bridge); err != nil {
		errs = append(errs, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("network: teardown: %w", errors.Join(append(errs, err)...))
	}
	l, err := h.LinkByName(m.cfg.Bridge)
	switch {
	case isLinkNotFound(err):
	case err != nil:
		errs = append(errs, fmt.Errorf("bridge %s: %w", m.cfg.Bridge, err))
	case l.Type() != "bridge":
		errs = append(errs, fmt.Errorf("%s is a %s, not a bridge; left alone", m.cfg.Bridge, l.Type()))
	default:
		if err := h.LinkDel(l); err != nil && !isLinkNotFound(err) {
			errs = append(errs, fmt.Errorf("delete bridge %s: %w", m.cfg.Bridge, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("network: teardown: %w", err)
	}
	return nil
}

// deleteHostTable removes the host table of bridge; a missing table is not
// an error.
func deleteHostTable(ns netns.NsHandle, bridge string) error {
	return deleteTable(ns, &nftables.Table{Name: HostTableName(bridge), Family: nftables.TableFamilyINet})
}
