package store

import (
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// EventsPage is EventsSince reading at most limit events (all of them when
// limit is zero or less): the retained events after seq, oldest first, and
// ok false when events after seq were already trimmed (the retained ones
// are still returned). A seq at or beyond LastEventSeq yields no events
// and ok true. A reader that
// replays a long history calls it again from the last sequence number it
// got, so that no call decodes the whole history.
func (s *Store) EventsPage(ctx context.Context, seq uint64, limit int) (events []EventRecord, ok bool, err error) {
	err = s.view(ctx, func(root *bolt.Bucket) error {
		last := decodeU64(root.Get(keyEventSeq))
		if seq >= last {
			ok = true
			return nil
		}
		// Nothing after seq was trimmed when seq is at or after the last
		// trimmed event (a missing number after it is one that was never
		// written). A store created before that key was kept: seq must
		// reach the oldest retained event.
		c := root.Bucket(bktEvents).Cursor()
		var trimmed uint64
		if v := root.Get(keyEventsTrimmed); v != nil {
			trimmed = decodeU64(v)
		} else if k, _ := c.First(); k != nil {
			trimmed = decodeU64(k) - 1
		}
		ok = seq >= trimmed
		for k, v := c.Seek(u64(seq + 1)); k != nil && (limit <= 0 || len(events) < limit); k, v = c.Next() {
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
