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
// one must be exactly that, or the call fails with errdefs.ErrInvalidArgument.
// In the same transaction the oldest events beyond Options.EventHistory are
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
	if ev.Seq != 0 && ev.Seq != next {
		return ev, fmt.Errorf("sequence %d, want %d: %w", ev.Seq, next, errdefs.ErrInvalidArgument)
	}
	ev.Seq = next
	data, err := json.Marshal(ev)
	if err != nil {
		return ev, fmt.Errorf("encode: %w", err)
	}
	b := root.Bucket(bktEvents)
	if err := b.Put(u64(next), data); err != nil {
		return ev, err
	}
	if err := root.Put(keyEventSeq, u64(next)); err != nil {
		return ev, err
	}
	if next <= s.history {
		return ev, nil
	}
	// Keep seqs (next-history, next]; usually this deletes one key.
	cut := next - s.history
	var doomed [][]byte
	c := b.Cursor()
	for k, _ := c.First(); k != nil && decodeU64(k) <= cut; k, _ = c.Next() {
		doomed = append(doomed, append([]byte(nil), k...))
	}
	for _, k := range doomed {
		if err := b.Delete(k); err != nil {
			return ev, err
		}
	}
	return ev, nil
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
	err = s.view(ctx, func(root *bolt.Bucket) error {
		last := decodeU64(root.Get(keyEventSeq))
		if seq >= last {
			ok = true
			return nil
		}
		c := root.Bucket(bktEvents).Cursor()
		oldest := last + 1
		if k, _ := c.First(); k != nil {
			oldest = decodeU64(k)
		}
		ok = seq+1 >= oldest
		for k, v := c.Seek(u64(seq + 1)); k != nil; k, v = c.Next() {
			var ev EventRecord
			if err := decode(v, &ev); err != nil {
				return fmt.Errorf("event %d: %w", decodeU64(k), err)
			}
			events = append(events, ev)
		}
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("events since %d: %w", seq, err)
	}
	return events, ok, nil
}
