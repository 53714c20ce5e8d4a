package fcemu

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
)

// Test hooks for package fcemu_test.

// OpenTAP exposes openTAP.
func OpenTAP(name string) (*os.File, error) { return openTAP(name) }

// TestResponder wraps a responder (the guest network of one NIC).
type TestResponder struct{ r *responder }

// NewTestResponder makes a responder answering for mac/ip on tap.
func NewTestResponder(tap *os.File, mac net.HardwareAddr, ip netip.Addr) *TestResponder {
	return &TestResponder{r: &responder{tap: tap, guest: guestIface{mac: mac, ip: ip}, log: newLogger("test", io.Discard), met: newMetrics("test")}}
}

// Start starts answering until ctx ends or Stop.
func (t *TestResponder) Start(ctx context.Context) { t.r.start(ctx) }

// Stop stops answering and waits for the read loop.
func (t *TestResponder) Stop() { t.r.stop() }
