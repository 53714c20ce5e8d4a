package network

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// TestVerify breaks a sandbox's network the ways a host can while the
// daemon is down and checks that Verify repairs what can be rebuilt under
// a running VMM (traffic flows again) and reports what cannot.
func TestVerify(t *testing.T) {
	e := newEnv(t, nil)
	for _, tc := range []struct {
		name  string
		brk   func(t *testing.T, att Attachment)
		lost  string // non-empty: Verify reports the loss, with this text
		check bool   // the repaired sandbox answers a ping
	}{
		{name: "intact", brk: func(*testing.T, Attachment) {}, check: true},
		{name: "host veth deleted", check: true, brk: func(t *testing.T, att Attachment) {
			inNS(t, e.host, func(h *netlink.Handle) {
				if err := deleteLink(h, att.HostVeth); err != nil {
					t.Fatal(err)
				}
			})
		}},
		{name: "host veth off the bridge and down", check: true, brk: func(t *testing.T, att Attachment) {
			inNS(t, e.host, func(h *netlink.Handle) {
				l, err := h.LinkByName(att.HostVeth)
				if err == nil {
					err = errors.Join(h.LinkSetNoMaster(l), h.LinkSetDown(l))
				}
				if err != nil {
					t.Fatal(err)
				}
			})
		}},
		{name: "port filter deleted", check: true, brk: func(t *testing.T, att Attachment) {
			if err := deleteSourceFilter(e.m.hostNS, portFilterTable(e.m.cfg.Bridge, att.HostVeth)); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "namespace deleted", lost: "namespace", brk: func(t *testing.T, att Attachment) {
			if err := deleteNetns(att.NetnsPath); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "TAP deleted", lost: "TAP", brk: func(t *testing.T, att Attachment) {
			inNS(t, att.NetnsPath, func(h *netlink.Handle) {
				l, err := h.LinkByName(TAPName)
				if err == nil {
					err = h.LinkDel(l)
				}
				if err != nil {
					t.Fatal(err)
				}
			})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			att := e.attach(context.Background())
			if tc.check {
				startGuest(t, att)
			}
			tc.brk(t, att)
			err := e.m.Verify(context.Background(), att.SandboxID, att.IP)
			if tc.lost != "" {
				if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), tc.lost) {
					t.Fatalf("Verify: got %v, want FailedPrecondition naming the %s", err, tc.lost)
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			portTable := fmt.Sprintf("%d/%s", nftables.TableFamilyNetdev, portFilterTable(e.m.cfg.Bridge, att.HostVeth))
			if tables := nsTables(t, e.host); !slices.Contains(tables, portTable) {
				t.Errorf("host tables %v lack %s", tables, portTable)
			}
			inNS(t, e.host, func(h *netlink.Handle) {
				l, err := h.LinkByName(att.HostVeth)
				if err != nil {
					t.Fatalf("host veth: %v", err)
				}
				br, err := h.LinkByName(e.m.cfg.Bridge)
				if err != nil || l.Attrs().MasterIndex != br.Attrs().Index {
					t.Errorf("host veth not on the bridge (%v)", err)
				}
			})
			if err := ping(e.host, att.IP, 3*time.Second); err != nil {
				t.Errorf("ping after Verify: %v", err)
			}
		})
	}
}

// TestLegacyAttachment: a sandbox attached by an earlier version (unscoped
// names) that still runs after an upgrade is accepted by Verify and
// removed by Detach.
func TestLegacyAttachment(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	id := e.id()
	ip, err := e.m.pool.Allocate(id)
	if err != nil {
		t.Fatal(err)
	}
	path := netnsPath(DefaultNetnsDir, legacyNetnsName(id))
	if err := createNetns(path, nil); err != nil {
		_ = deleteNetns(path)
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deleteNetns(path) })
	veth := legacyHostVeth(id)
	inNS(t, e.host, func(h *netlink.Handle) {
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: veth}, PeerName: "peer0"}); err != nil {
			t.Fatal(err)
		}
	})
	if err := e.m.Verify(ctx, id, ip); err != nil {
		t.Errorf("Verify of a legacy attachment: %v", err)
	}
	if err := e.m.Detach(ctx, id); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("legacy namespace left: %v", err)
	}
	if links := nsLinks(t, e.host); slices.Contains(links, veth) || slices.Contains(links, "peer0") {
		t.Errorf("legacy veth left: %v", links)
	}
	if err := e.m.Verify(ctx, id, ip); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Verify after Detach: got %v, want FailedPrecondition", err)
	}
}
