package store

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	bolt "go.etcd.io/bbolt"
)

// AppendEvent stores an event and returns it with its sequence number. A
// zero ev.Seq is assigned the next number (LastEventSeq()+1); a non-zero
// one must be above LastEventSeq (gaps are allowed: events that were
// published but never written, or a sequence advanced after a crash), or
// the call fails with errdefs.ErrInvalidArgument. In the same transaction
// the events older than the last Options.EventHistory sequence numbers are
// trimmed. It is durable when it returns.
func (s *Store) AppendEvent(ctx context.Context, ev EventRecord) (EventRecord, error) {
	err := s.update(ctx, func(root *bolt.Bucket) error {
		var err error
		ev, err = s.appendEvent(root, ev)
		return err
	})
	if err != nil {
		return EventRecord{}, fmt.Errorf("append event: %w", err)
	}
	return ev, nil
}

// AppendEvents appends several events in one transaction (one fsync), with
// AppendEvent's rules for each, in order.
func (s *Store) AppendEvents(ctx context.Context, evs []EventRecord) error {
	err := s.update(ctx, func(root *bolt.Bucket) error {
		for _, ev := range evs {
			if _, err := s.appendEvent(root, ev); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("append events: %w", err)
	}
	return nil
}

// appendEvent appends ev inside a write transaction and trims the history.
func (s *Store) appendEvent(root *bolt.Bucket, ev EventRecord) (EventRecord, error) {
	next := decodeU64(root.Get(keyEventSeq)) + 1
	if ev.Seq != 0 && ev.Seq < next {
		return ev, fmt.Errorf("sequence %d, want %d or more: %w", ev.Seq, next, errdefs.ErrInvalidArgument)
	}
	if ev.Seq == 0 {
		ev.Seq = next
	}
	next = ev.Seq
	data, err := json.Marshal(ev)
	if err != nil {
		return ev, fmt.Errorf("encode: %w", err)
	}
	b := root.Bucket(bktEvents)
	n, err := eventCount(root)
	if err != nil {
		return ev, err
	}
	if err := b.Put(u64(next), data); err != nil {
		return ev, err
	}
	if err := root.Put(keyEventSeq, u64(next)); err != nil {
		return ev, err
	}
	// Keep the last Options.EventHistory events (by count, not by
	// number: a sequence that skipped ahead must not wipe the history);
	// usually this deletes one key.
	n++
	var trimmed []byte
	c := b.Cursor()
	for k, _ := c.First(); k != nil && n > s.history; k, _ = c.First() {
		trimmed = append([]byte(nil), k...)
		if err := c.Delete(); err != nil {
			return ev, err
		}
		n--
	}
	if trimmed != nil {
		// Replays after a trimmed event are incomplete (EventsSince).
		if err := root.Put(keyEventsTrimmed, trimmed); err != nil {
			return ev, err
		}
	}
	return ev, root.Put(keyEventCount, u64(n))
}

// eventCount returns how many events the history holds: the count key, or
// (in a store written before it was kept) a count of the keys.
func eventCount(root *bolt.Bucket) (uint64, error) {
	if v := root.Get(keyEventCount); v != nil {
		return decodeU64(v), nil
	}
	var n uint64
	err := root.Bucket(bktEvents).ForEach(func(_, _ []byte) error { n++; return nil })
	return n, err
}

// AdvanceEventSeq raises LastEventSeq to seq (it never lowers it), so that
// the next event gets seq+1. It is durable when it returns.
func (s *Store) AdvanceEventSeq(ctx context.Context, seq uint64) error {
	err := s.update(ctx, func(root *bolt.Bucket) error {
		if decodeU64(root.Get(keyEventSeq)) >= seq {
			return nil
		}
		return root.Put(keyEventSeq, u64(seq))
	})
	if err != nil {
		return fmt.Errorf("advance event seq to %d: %w", seq, err)
	}
	return nil
}

// BeginRun is called once by a daemon that starts using the store. It
// reports whether the previous run ended with EndRun (or the store is
// new) and clears that mark, durably: a run that dies without EndRun is
// then seen by the next BeginRun as unclean.
func (s *Store) BeginRun(ctx context.Context) (clean bool, err error) {
	err = s.update(ctx, func(root *bolt.Bucket) error {
		clean = root.Get(keyCleanEnd) != nil
		if !clean {
			return nil
		}
		return root.Delete(keyCleanEnd)
	})
	if err != nil {
		return false, fmt.Errorf("begin run: %w", err)
	}
	return clean, nil
}

// EndRun marks the run as ended cleanly: everything it published is in the
// store. It is durable when it returns.
func (s *Store) EndRun(ctx context.Context) error {
	if err := s.update(ctx, func(root *bolt.Bucket) error { return root.Put(keyCleanEnd, []byte{1}) }); err != nil {
		return fmt.Errorf("end run: %w", err)
	}
	return nil
}

// LastEventSeq returns the sequence number of the last event ever appended
// (0 when none), whether or not it is still retained.
func (s *Store) LastEventSeq(ctx context.Context) (uint64, error) {
	var seq uint64
	err := s.view(ctx, func(root *bolt.Bucket) error {
		seq = decodeU64(root.Get(keyEventSeq))
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("last event seq: %w", err)
	}
	return seq, nil
}

// EventsSince returns the retained events with a sequence number greater
// than seq, oldest first. ok is false when events after seq have already
// been trimmed from the history (seq is older than the retained window);
// the retained events are still returned so a caller may send them after
// reporting the gap. A seq at or beyond LastEventSeq yields no events and
// ok true.
func (s *Store) EventsSince(ctx context.Context, seq uint64) (events []EventRecord, ok bool, err error) {
	return s.EventsPage(ctx, seq, 0)
}
