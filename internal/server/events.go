package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs/errgrpc"
	"github.com/firecracker-vmm/firecracker-vmm/internal/events"
	"github.com/firecracker-vmm/firecracker-vmm/internal/sandbox"
)

// DefaultMaxEventSubscribers is how many Events streams a daemon serves at
// once unless configured otherwise ([daemon] max_event_subscribers).
const DefaultMaxEventSubscribers = 256

// DefaultEventSendTimeout is how long one event may wait to be sent to a
// client that does not read its Events stream before the stream is ended
// as a slow consumer.
const DefaultEventSendTimeout = 30 * time.Second

// historyPage is how many events of history an Events stream holds at
// once while it replays from a sequence number.
const historyPage = 64

// SubscriberLimit caps the number of concurrent Events streams across
// every server that shares it (the daemon's unix and TCP listeners share
// one). It is safe for concurrent use.
type SubscriberLimit struct {
	max int64
	n   atomic.Int64
}

// NewSubscriberLimit returns a limit of n streams (at least 1).
func NewSubscriberLimit(n int) *SubscriberLimit {
	return &SubscriberLimit{max: int64(max(n, 1))}
}

// Max returns the limit.
func (l *SubscriberLimit) Max() int { return int(l.max) }

// acquire takes a slot; it reports false, taking nothing, when all are in
// use.
func (l *SubscriberLimit) acquire() bool {
	if l.n.Add(1) > l.max {
		l.n.Add(-1)
		return false
	}
	return true
}

// release returns a slot taken by acquire.
func (l *SubscriberLimit) release() { l.n.Add(-1) }

// errSendTimeout ends a stream whose client did not take an event within
// the send timeout.
var errSendTimeout = errors.New("event send timed out")

// eventSender sends a stream's events from a goroutine of its own, so
// that the handler can give up on a send the client's flow control holds
// back: the handler then returns, which ends the stream and with it the
// blocked send. Only that goroutine calls Send on the stream (grpc forbids
// concurrent Sends); grpc's post-handler bookkeeping touches nothing a
// Send in progress uses on a server without binary logging or tracing,
// and the blocked Send returns once the stream is done.
type eventSender struct {
	timeout time.Duration
	msgs    chan *sandboxv1.Event
	errs    chan error
}

// newEventSender starts the sending goroutine; close ends it.
func newEventSender(stream grpc.ServerStreamingServer[sandboxv1.Event], timeout time.Duration) *eventSender {
	e := &eventSender{timeout: timeout, msgs: make(chan *sandboxv1.Event), errs: make(chan error, 1)}
	go func() {
		for msg := range e.msgs {
			e.errs <- stream.Send(msg)
		}
	}()
	return e
}

// send sends msg, failing with errSendTimeout when it has not gone within
// the timeout. After an error it must not be called again.
func (e *eventSender) send(msg *sandboxv1.Event) error {
	e.msgs <- msg
	t := time.NewTimer(e.timeout)
	defer t.Stop()
	select {
	case err := <-e.errs:
		return err
	case <-t.C:
		return errSendTimeout
	}
}

// close lets the sending goroutine end once its Send (if any) returns.
func (e *eventSender) close() { close(e.msgs) }

// Events streams lifecycle events until the client goes away or the
// subscription ends. At most the configured number of streams run at once
// (a further one gets RESOURCE_EXHAUSTED). History asked for with since is
// sent page by page before the live events. A client that falls behind,
// or does not take an event within the send timeout, gets
// RESOURCE_EXHAUSTED; when the daemon shuts down the stream ends with
// UNAVAILABLE.
func (s *Service) Events(req *sandboxv1.EventsRequest, stream grpc.ServerStreamingServer[sandboxv1.Event]) error {
	f := events.Filter{SandboxID: req.GetId()}
	if f.SandboxID != "" && !sandbox.ValidID(f.SandboxID) {
		return errgrpc.ToGRPC(fmt.Errorf("events: sandbox id %q: must be 12 characters of 0-9 and a-z except i, l, o, u: %w",
			f.SandboxID, errdefs.ErrInvalidArgument))
	}
	for _, a := range req.GetActions() {
		if !slices.Contains(knownActions, a) {
			return errgrpc.ToGRPC(fmt.Errorf("events: unknown action %q (known: %v): %w", a, knownActions, errdefs.ErrInvalidArgument))
		}
		if !slices.Contains(f.Actions, a) {
			f.Actions = append(f.Actions, a)
		}
	}
	if !s.subscribers.acquire() {
		return errgrpc.ToGRPC(fmt.Errorf("events: %d event streams are open, the daemon's limit ([daemon] max_event_subscribers); retry later: %w",
			s.subscribers.Max(), errdefs.ErrResourceExhausted))
	}
	defer s.subscribers.release()
	ctx := stream.Context()
	snd := newEventSender(stream, s.sendTimeout)
	defer snd.close()

	since, err := s.replay(ctx, f, req.GetSince(), snd)
	if err != nil {
		return s.streamEnded(ctx, f, req.GetSince(), err)
	}
	sub, err := s.events.Subscribe(ctx, f, since)
	if err != nil {
		return s.streamEnded(ctx, f, req.GetSince(), err)
	}
	defer sub.Close()
	for ev := range sub.C() {
		if err := snd.send(eventToProto(ev)); err != nil {
			return s.streamEnded(ctx, f, req.GetSince(), err)
		}
	}
	return s.streamEnded(ctx, f, req.GetSince(), sub.Err())
}

// replay sends the history after since one page at a time and returns the
// sequence number it has caught up to, from which the live subscription
// starts.
func (s *Service) replay(ctx context.Context, f events.Filter, since uint64, snd *eventSender) (uint64, error) {
	if since == 0 {
		return 0, nil
	}
	for ctx.Err() == nil {
		evs, next, err := s.events.History(f, since, historyPage)
		if err != nil {
			return since, err
		}
		for _, ev := range evs {
			if err := snd.send(eventToProto(ev)); err != nil {
				return since, err
			}
		}
		if next == since {
			return since, nil
		}
		since = next
	}
	return since, ctx.Err()
}

// streamEnded maps why an Events stream ended to the status its client
// gets.
func (s *Service) streamEnded(ctx context.Context, f events.Filter, since uint64, err error) error {
	switch {
	case errors.Is(err, events.ErrSlowConsumer), errors.Is(err, errSendTimeout):
		s.log.LogAttrs(ctx, slog.LevelWarn, "event subscriber fell behind and was disconnected",
			slog.String("sandbox_id", f.SandboxID), slog.String("reason", err.Error()))
		return errgrpc.ToGRPC(fmt.Errorf("client fell behind the event stream and was disconnected; reconnect (with since) to resume: %w",
			errdefs.ErrResourceExhausted))
	case errors.Is(err, events.ErrHistoryGone):
		return errgrpc.ToGRPC(fmt.Errorf("events since %d are no longer retained; subscribe with since 0: %w",
			since, errdefs.ErrFailedPrecondition))
	case errors.Is(err, events.ErrClosed):
		return errgrpc.ToGRPC(fmt.Errorf("daemon shutting down: %w", errdefs.ErrUnavailable))
	case ctx.Err() != nil:
		return errgrpc.ToGRPC(ctx.Err())
	default:
		return errgrpc.ToGRPC(err)
	}
}
