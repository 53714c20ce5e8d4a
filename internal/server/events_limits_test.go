package server

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/events"
)

// The subscriber beyond the cap gets RESOURCE_EXHAUSTED naming the config
// key; one that ends frees its slot for the next.
func TestEventsSubscriberCap(t *testing.T) {
	const limit = 2
	h := newHarness(t, events.Options{}, func(c *Config) { c.EventSubscribers = NewSubscriberLimit(limit) })
	ctx := ctxT(t)
	var cancels []context.CancelFunc
	for range limit {
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		cancels = append(cancels, cancel)
		if _, err := h.client.Events(sctx, &sandboxv1.EventsRequest{}); err != nil {
			t.Fatal(err)
		}
		<-h.ev.subscribed
	}
	stream, err := h.client.Events(ctx, &sandboxv1.EventsRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "max_event_subscribers") {
		t.Fatalf("subscriber %d of %d: %v, want ResourceExhausted naming max_event_subscribers", limit+1, limit, err)
	}
	// Ending one subscription frees a slot: the handler releases it on
	// return, which follows the end of its subscription.
	cancels[0]()
	h.ev.mu.Lock()
	first := h.ev.subs[0]
	h.ev.mu.Unlock()
	<-first.Done()
	// Until the handler has returned, a new stream may still be refused.
	for {
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := h.client.Events(sctx, &sandboxv1.EventsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		refused := make(chan error, 1)
		go func() {
			_, err := stream.Recv()
			refused <- err
		}()
		select {
		case <-h.ev.subscribed:
			return
		case err := <-refused:
			if status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("after a subscriber left: %v", err)
			}
		}
	}
}

// A client that subscribes and never reads is disconnected as a slow
// consumer once one event has waited the send timeout, even when the
// exchange's buffer is far too large ever to overflow: the rule bites
// where the backlog is, in the stream, not only in the exchange.
func TestEventsClientThatDoesNotReadIsDisconnected(t *testing.T) {
	const n = 64
	// A fixed client window (no growth) keeps the events from all fitting
	// in the client's buffers.
	h := newHarnessDial(t, events.Options{Buffer: 1 << 16},
		[]grpc.DialOption{grpc.WithInitialWindowSize(64 << 10), grpc.WithInitialConnWindowSize(64 << 10)},
		func(c *Config) { c.EventSendTimeout = 50_000_000 }) // 50ms
	ctx := ctxT(t)
	stream, err := h.client.Events(ctx, &sandboxv1.EventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	<-h.ev.subscribed
	h.ev.mu.Lock()
	sub := h.ev.subs[0]
	h.ev.mu.Unlock()
	big := strings.Repeat("x", 32<<10)
	for range n {
		h.ev.x.Publish(events.Event{SandboxID: "01h2k3m4n5p6", Action: "created", State: "starting", Attributes: map[string]string{"big": big}})
	}
	// The client has read nothing yet: the server must end the stream on
	// its own.
	select {
	case <-sub.Done():
	case <-ctx.Done():
		t.Fatal("a client that does not read was never disconnected")
	}
	got := recvUntilFellBehind(t, stream)
	if got >= n {
		t.Errorf("received all %d events; the consumer was never dropped", got)
	}
	if !strings.Contains(h.logs.String(), "fell behind") {
		t.Errorf("slow consumer not logged:\n%s", h.logs)
	}
}

// A subscription from far back in a long history is replayed page by page
// (no page above historyPage events) and the live subscription starts
// where the pages end, so it holds no history of its own; the client still
// gets every event once, in order.
func TestEventsHistoryIsPaged(t *testing.T) {
	const total = 1000
	h := newHarness(t, events.Options{History: 2 * total})
	for range total {
		h.ev.x.Publish(events.Event{SandboxID: "01h2k3m4n5p6", Action: "created", State: "starting"})
	}
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	stream, err := h.client.Events(ctx, &sandboxv1.EventsRequest{Since: 1})
	if err != nil {
		t.Fatal(err)
	}
	got := recvN(t, stream, total-1)
	for i, ev := range got {
		if ev.GetSeq() != uint64(i+2) {
			t.Fatalf("event %d has seq %d, want %d", i, ev.GetSeq(), i+2)
		}
	}
	<-h.ev.subscribed
	h.ev.mu.Lock()
	defer h.ev.mu.Unlock()
	if len(h.ev.sinces) != 1 || h.ev.sinces[0] != total {
		t.Errorf("Subscribe called with since %v, want [%d] (caught up by the pages)", h.ev.sinces, total)
	}
	if len(h.ev.pages) < (total-1)/historyPage {
		t.Errorf("history read in %d pages, want at least %d", len(h.ev.pages), (total-1)/historyPage)
	}
	for i, n := range h.ev.pages {
		if n > historyPage {
			t.Errorf("page %d holds %d events, more than %d", i, n, historyPage)
		}
	}
}

// recvUntilFellBehind reads the stream until it ends, which must be with
// RESOURCE_EXHAUSTED for a slow consumer, and returns how many events came
// first.
func recvUntilFellBehind(t *testing.T, stream grpc.ServerStreamingClient[sandboxv1.Event]) int {
	t.Helper()
	for n := 0; ; n++ {
		_, err := stream.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "fell behind") {
			t.Fatalf("after %d events: %v, want ResourceExhausted ... fell behind", n, err)
		}
		return n
	}
}
