package network

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
)

// TestManagersKeepApart runs two managers with different bridges and cidrs
// (two daemons) on one host and checks that neither touches what the other
// made: Setup does not replace the other's table, the same sandbox id
// attaches under both, ListNetns lists only one's own namespaces, and
// Detach (as stray cleanup calls it) removes only one's own.
func TestManagersKeepApart(t *testing.T) {
	const deny = 7443
	e := newEnv(t, func(c *Config) { c.DenyTCPPorts = []uint16{deny} })
	ctx := context.Background()
	cfg2 := defaultTestConfig(e.host)
	cfg2.Bridge = "vmmbr1"
	cfg2.CIDR, cfg2.Gateway = netip.MustParsePrefix("10.98.0.0/24"), netip.MustParseAddr("10.98.0.1")
	m2, err := New(cfg2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := teardown(context.Background(), m2); err != nil {
			t.Errorf("teardown of the second manager: %v", err)
		}
		m2.Close()
	})
	a1 := e.attach(ctx)
	startGuest(t, a1)
	if err := m2.Setup(ctx); err != nil {
		t.Fatalf("second Setup: %v", err)
	}
	// The same id (ids are random; the same one is the hardest case).
	id := a1.SandboxID
	a2, err := m2.Attach(ctx, id)
	if err != nil {
		t.Fatalf("second Attach of %s: %v", id, err)
	}
	t.Cleanup(func() {
		if err := m2.Detach(context.Background(), id); err != nil {
			t.Errorf("second Detach: %v", err)
		}
	})
	if a2.Netns == a1.Netns || a2.HostVeth == a1.HostVeth {
		t.Fatalf("the managers share names: %+v and %+v", a1, a2)
	}

	for _, tc := range []struct {
		m    *Manager
		want []string
	}{{e.m, []string{id}}, {m2, []string{id}}} {
		ids, err := tc.m.ListNetns()
		ids = slices.DeleteFunc(ids, func(id string) bool { return !strings.HasPrefix(id, e.prefix) })
		if err != nil || !slices.Equal(ids, tc.want) {
			t.Errorf("ListNetns of %s = %v, %v; want %v", tc.m.cfg.Bridge, ids, err, tc.want)
		}
	}
	// Both host tables are there, the first one with its deny rule.
	c, done := nsConn(t, e.host)
	defer done()
	for _, br := range []string{e.m.cfg.Bridge, cfg2.Bridge} {
		tb := &nftables.Table{Name: HostTableName(br), Family: nftables.TableFamilyINet}
		if _, err := c.GetRules(tb, &nftables.Chain{Name: chainForward, Table: tb}); err != nil {
			t.Errorf("host table of %s: %v", br, err)
		}
	}
	tb1 := &nftables.Table{Name: HostTableName(e.m.cfg.Bridge), Family: nftables.TableFamilyINet}
	if rules, err := c.GetRules(tb1, &nftables.Chain{Name: chainInput, Table: tb1}); err != nil || len(rules) != 1 {
		t.Errorf("the first manager's deny rule: %d rules, %v; want 1", len(rules), err)
	}

	// The second manager's Detach of the id removes its own attachment
	// only; the first sandbox keeps its namespace, veth and traffic.
	if err := m2.Detach(ctx, id); err != nil {
		t.Fatalf("second Detach: %v", err)
	}
	if !isNetnsMount(a1.NetnsPath) {
		t.Errorf("the first manager's namespace %s is gone", a1.NetnsPath)
	}
	if isNetnsMount(a2.NetnsPath) {
		t.Errorf("the second manager's namespace %s is left", a2.NetnsPath)
	}
	inNS(t, e.host, func(h *netlink.Handle) {
		if _, err := h.LinkByName(a1.HostVeth); err != nil {
			t.Errorf("the first manager's veth: %v", err)
		}
		if _, err := h.LinkByName(a2.HostVeth); err == nil {
			t.Errorf("the second manager's veth %s is left", a2.HostVeth)
		}
	})
	if err := ping(e.host, a1.IP, 3*time.Second); err != nil {
		t.Errorf("ping the first sandbox after the second manager's detach: %v", err)
	}
	for _, tc := range []struct {
		m    *Manager
		want []string
	}{{e.m, []string{id}}, {m2, nil}} {
		ids, err := tc.m.ListNetns()
		ids = slices.DeleteFunc(ids, func(id string) bool { return !strings.HasPrefix(id, e.prefix) })
		if err != nil || !slices.Equal(ids, tc.want) {
			t.Errorf("ListNetns of %s after the second Detach = %v, %v; want %v", tc.m.cfg.Bridge, ids, err, tc.want)
		}
	}
}
