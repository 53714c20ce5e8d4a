// Package events is the daemon's in-process lifecycle event exchange.
//
// Publishers (the sandbox manager) call Publish, which never blocks: each
// subscriber has a bounded buffer, and a subscriber whose buffer is full is
// dropped with ErrSlowConsumer instead of slowing the publisher down. The
// exchange keeps the most recent events in a bounded ring so that a
// subscriber can resume from a sequence number, and reads older ones from
// Options.Backfill (the durable store).
//
// # Concurrency properties
//
// All methods are safe for concurrent use. Events reach every subscriber in
// publication order, with strictly increasing sequence numbers. A
// subscription that resumes from a sequence number gets every matching
// event after it exactly once, in order: first the history, then the live
// events, with no gap and no duplicate at the join. A Subscription's
// channel is closed when the subscription ends (its context ends, Close is
// called, it falls behind, or the exchange is closed); Err then says why.
//
// # Locking
//
// One mutex per Exchange (Exchange.mu) guards the sequence number, the
// ring, the set of subscriptions and each subscription's end. What holds
// it, and for how long:
//
//   - Publish holds it for its whole run: assigning the sequence number,
//     calling Options.Persist (and OnPersistError), updating the ring and
//     sending to each subscriber's buffer without blocking. Persist and
//     OnPersistError therefore run with the lock held: they must not block
//     or call back into the exchange. The sandbox manager calls Publish
//     while holding a sandbox's lock, so the exchange's lock comes after
//     every caller's.
//   - Subscribe holds it only to look at the ring and, once it has the
//     history it needs, to read the rest of the ring and register the
//     subscription in one step. It calls Options.Backfill with no lock
//     held: a slow read of old history never delays Publish, and Backfill
//     may itself publish or subscribe.
//   - History holds it only to read one page of the ring, and calls
//     Options.BackfillPage (or Backfill) with no lock held.
//   - SetSeq, LastSeq, Close, Subscription.Err and Subscription.Close
//     hold it briefly; a subscription's context callback takes it to end
//     the subscription.
//
// It imports the standard library only.
package events

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"
)

// ErrSlowConsumer ends a subscription whose buffer overflowed.
var ErrSlowConsumer = errors.New("events: subscriber fell behind and was disconnected")

// ErrClosed ends every subscription when the exchange is closed.
var ErrClosed = errors.New("events: exchange closed")

// ErrHistoryGone is returned by Subscribe when the requested sequence is
// older than the retained history.
var ErrHistoryGone = errors.New("events: requested sequence is no longer retained")

// Event is one lifecycle event.
type Event struct {
	// Seq is assigned by Publish: 1 for the first event, then +1 each.
	Seq uint64
	// SandboxID is the sandbox the event is about.
	SandboxID string
	// Action says what happened (created, ready, failed, stopping, stopped,
	// exited, removed, expired, ...).
	Action string
	// State is the sandbox's state after the event (lower case).
	State string
	// Time is assigned by Publish when zero.
	Time time.Time
	// Attributes carry details (reason, exit status, ...). Not mutated
	// after Publish.
	Attributes map[string]string
}

// Filter selects events. Zero values match everything.
type Filter struct {
	// SandboxID keeps only events of that sandbox.
	SandboxID string
	// Actions keeps only these actions.
	Actions []string
}

// Match reports whether ev passes the filter.
func (f Filter) Match(ev Event) bool {
	if f.SandboxID != "" && ev.SandboxID != f.SandboxID {
		return false
	}
	return len(f.Actions) == 0 || slices.Contains(f.Actions, ev.Action)
}

// Options size an Exchange.
type Options struct {
	// Buffer is each subscriber's channel capacity (default 256).
	Buffer int
	// History is how many recent events are retained for resumption
	// (default 1024).
	History int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Persist, when set, is called by Publish with each event once its
	// sequence number is assigned, in sequence order, before the event is
	// delivered (the daemon queues it for the durable store). It runs with
	// the exchange's lock held (see Locking), so it must not block or call
	// into the exchange. Its error is only reported to OnPersistError
	// (called the same way): the event is published anyway.
	Persist func(Event) error
	// OnPersistError receives Persist's errors (default: ignored).
	OnPersistError func(Event, error)
	// Backfill, when set, returns the stored events after since, oldest
	// first, for a subscriber resuming from further back than the
	// retained history (the daemon reads the durable store); ok is false
	// when some of them are gone there too. It is called without the
	// exchange's lock (see Locking), possibly more than once per
	// Subscribe, each time with a greater since. The exchange relies on
	// its result holding every event ever written after since that is
	// older than the ring's oldest event when Subscribe looked, and every
	// written one up to the newest it returns: a sequence number missing
	// there is taken as one that was never written. Events it returns
	// that the ring still holds are delivered from the ring.
	Backfill func(since uint64) (evs []Event, ok bool, err error)
	// BackfillPage, when set, is Backfill reading at most limit (> 0)
	// stored events: History uses it to page through old history without
	// reading all of it at once. It has Backfill's contract for what it
	// returns, up to the newest event it returns, and the same locking.
	// When nil, History calls Backfill and keeps the first limit events.
	BackfillPage func(since uint64, limit int) (evs []Event, ok bool, err error)
}

// maxBackfillRounds bounds how often one Subscribe calls Backfill. It
// calls it again only when events were published so fast during the
// previous call that the ring no longer reaches back to what that call
// returned.
const maxBackfillRounds = 4

// Exchange fans events out to subscribers.
type Exchange struct {
	buffer    int
	history   int
	now       func() time.Time
	persist   func(Event) error
	onPersist func(Event, error)
	backfill  func(since uint64) ([]Event, bool, error)
	page      func(since uint64, limit int) ([]Event, bool, error)

	// mu guards the fields that follow, and the err and stop fields of
	// every Subscription. See Locking in the package doc for when it is
	// held.
	mu     sync.Mutex
	seq    uint64
	ring   []Event // the last `history` events, oldest first
	subs   map[*Subscription]struct{}
	closed bool
}

// NewExchange returns an empty exchange.
func NewExchange(o Options) *Exchange {
	if o.Buffer <= 0 {
		o.Buffer = 256
	}
	if o.History <= 0 {
		o.History = 1024
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Exchange{buffer: o.Buffer, history: o.History, now: o.Now, subs: map[*Subscription]struct{}{},
		persist: o.Persist, onPersist: o.OnPersistError, backfill: o.Backfill, page: o.BackfillPage}
}

// SetSeq sets the last used sequence number (used when resuming from a
// durable store). It must be called before the first Publish.
func (x *Exchange) SetSeq(seq uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.seq = seq
}

// Publish assigns ev its sequence number (and time when zero), retains it
// and delivers it to every matching subscriber without blocking. It returns
// the event as published.
func (x *Exchange) Publish(ev Event) Event {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.seq++
	ev.Seq = x.seq
	if ev.Time.IsZero() {
		ev.Time = x.now()
	}
	ev.Attributes = maps.Clone(ev.Attributes)
	if x.persist != nil {
		if err := x.persist(ev); err != nil && x.onPersist != nil {
			x.onPersist(ev, err)
		}
	}
	if len(x.ring) == x.history {
		x.ring = slices.Delete(x.ring, 0, 1)
	}
	x.ring = append(x.ring, ev)
	if x.closed {
		return ev
	}
	for s := range x.subs {
		if !s.filter.Match(ev) {
			continue
		}
		select {
		case s.ch <- ev:
		default:
			x.endLocked(s, ErrSlowConsumer)
		}
	}
	return ev
}

// Subscribe starts a subscription. With since > 0, the matching events
// with a greater sequence number that are still known are delivered first,
// each once and in order, then the live ones. The retained ring serves
// them when it reaches back to since; otherwise Options.Backfill supplies
// the older part, read without the exchange's lock (Publish goes on
// meanwhile), and the ring the rest, which Subscribe takes together with
// registering the subscription. When the ring has moved past what Backfill
// returned, Backfill is asked again from there, up to maxBackfillRounds
// times in all. Subscribe fails with ErrHistoryGone when events after since
// are no longer retained (no Backfill, or Backfill says they are gone), or
// when the history could not be caught up within maxBackfillRounds. A
// since of 0, or at or beyond the last sequence number published, replays
// nothing: every event published after Subscribe is delivered. The
// subscription ends when ctx ends. The replayed history sits in the
// subscription's buffer until it is read, so a caller resuming from far
// back pages through it with History first and subscribes from where
// that ends (as the gRPC Events handler does).
func (x *Exchange) Subscribe(ctx context.Context, f Filter, since uint64) (*Subscription, error) {
	// old holds the stored events after since, increasing, that the
	// backfills returned; together with those never written they are
	// every event in (since, reach).
	var old []Event
	reach := since + 1
	for round := 0; ; round++ {
		x.mu.Lock()
		if x.closed {
			x.mu.Unlock()
			return nil, ErrClosed
		}
		// The oldest event the ring holds (x.seq+1 when it is empty).
		oldest := x.seq + 1 - uint64(len(x.ring))
		if since == 0 || since >= x.seq || oldest <= reach {
			s := x.subscribeLocked(ctx, f, since, old, oldest)
			x.mu.Unlock()
			return s, nil
		}
		x.mu.Unlock()
		if x.backfill == nil {
			return nil, ErrHistoryGone
		}
		if round == maxBackfillRounds {
			return nil, fmt.Errorf("events since %d: %w: the history moved on faster than %d reads of the store could follow",
				since, ErrHistoryGone, maxBackfillRounds)
		}
		evs, ok, err := x.backfill(reach - 1)
		if err != nil {
			return nil, fmt.Errorf("events since %d: %w", reach-1, err)
		}
		if !ok {
			return nil, ErrHistoryGone
		}
		// The store holds what was older than the ring when it was looked
		// at, and everything up to the newest event it returned.
		next := max(reach, oldest)
		for _, ev := range evs {
			if ev.Seq >= reach && (len(old) == 0 || ev.Seq > old[len(old)-1].Seq) {
				old = append(old, ev)
				next = max(next, ev.Seq+1)
			}
		}
		reach = next
	}
}

// subscribeLocked registers a subscription to f and fills its buffer with
// the history after since: the stored events in old older than the ring's
// oldest, then the ring's. x.mu must be held.
func (x *Exchange) subscribeLocked(ctx context.Context, f Filter, since uint64, old []Event, oldest uint64) *Subscription {
	var replay []Event
	if since > 0 {
		for _, ev := range old {
			if ev.Seq < oldest && f.Match(ev) {
				replay = append(replay, ev)
			}
		}
		for _, ev := range x.ring {
			if ev.Seq > since && f.Match(ev) {
				replay = append(replay, ev)
			}
		}
	}
	s := &Subscription{x: x, filter: f, ch: make(chan Event, x.buffer+len(replay)), done: make(chan struct{})}
	for _, ev := range replay {
		s.ch <- ev
	}
	x.subs[s] = struct{}{}
	s.stop = context.AfterFunc(ctx, func() { s.end(ctx.Err()) })
	return s
}

// Close ends every subscription with ErrClosed. Later Publish calls are
// retained but not delivered; later Subscribe calls fail.
func (x *Exchange) Close() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.closed = true
	for s := range x.subs {
		x.endLocked(s, ErrClosed)
	}
}

// LastSeq returns the sequence number of the last published event.
func (x *Exchange) LastSeq() uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.seq
}

// endLocked ends s with err. x.mu must be held.
func (x *Exchange) endLocked(s *Subscription, err error) {
	if _, ok := x.subs[s]; !ok {
		return
	}
	delete(x.subs, s)
	s.err = err
	close(s.ch)
	close(s.done)
}

// Subscription is one subscriber's view of the exchange.
type Subscription struct {
	x      *Exchange
	filter Filter
	ch     chan Event
	done   chan struct{}
	stop   func() bool // set under x.mu
	err    error       // set under x.mu before ch is closed
}

// C returns the channel of events. It is closed when the subscription ends.
func (s *Subscription) C() <-chan Event { return s.ch }

// Done is closed when the subscription ends.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err says why the subscription ended (nil while it runs). Call it after C
// is closed.
func (s *Subscription) Err() error {
	s.x.mu.Lock()
	defer s.x.mu.Unlock()
	return s.err
}

// Close ends the subscription.
func (s *Subscription) Close() { s.end(nil) }

func (s *Subscription) end(err error) {
	if err == nil {
		err = context.Canceled
	}
	s.x.mu.Lock()
	s.x.endLocked(s, err)
	stop := s.stop
	s.x.mu.Unlock()
	if stop != nil {
		stop()
	}
}
