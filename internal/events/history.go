package events

import "fmt"

// History returns one page of the history after since: the events
// matching f among at most limit events with a sequence number greater
// than since, oldest first, and next, the greatest sequence number the
// page covers (since when nothing was published after since). A caller
// that replays a long history pages with History, passing next as the
// next since, and then subscribes with the last next: no page holds more
// than limit events, where Subscribe would hold the whole history in the
// subscription's buffer.
//
// The ring serves the page when it reaches back to since; otherwise
// Options.BackfillPage (or Backfill) does, called without the exchange's
// lock. History fails with ErrHistoryGone when events after since are no
// longer retained, and with ErrClosed once the exchange is closed. A limit
// of zero or less is taken as 1.
func (x *Exchange) History(f Filter, since uint64, limit int) (evs []Event, next uint64, err error) {
	limit = max(limit, 1)
	x.mu.Lock()
	if x.closed {
		x.mu.Unlock()
		return nil, since, ErrClosed
	}
	// The oldest event the ring holds (x.seq+1 when it is empty).
	oldest := x.seq + 1 - uint64(len(x.ring))
	if since >= x.seq {
		x.mu.Unlock()
		return nil, since, nil
	}
	if oldest <= since+1 {
		next = since
		for _, ev := range x.ring[since+1-oldest:] {
			if limit == 0 {
				break
			}
			limit--
			next = ev.Seq
			if f.Match(ev) {
				evs = append(evs, ev)
			}
		}
		x.mu.Unlock()
		return evs, next, nil
	}
	x.mu.Unlock()

	var stored []Event
	var ok bool
	switch {
	case x.page != nil:
		stored, ok, err = x.page(since, limit)
	case x.backfill != nil:
		stored, ok, err = x.backfill(since)
	default:
		return nil, since, ErrHistoryGone
	}
	if err != nil {
		return nil, since, fmt.Errorf("events since %d: %w", since, err)
	}
	if !ok {
		return nil, since, ErrHistoryGone
	}
	next = since
	n := 0
	for _, ev := range stored {
		if ev.Seq <= next {
			continue // not increasing: ignore, as Subscribe does
		}
		if n == limit {
			break
		}
		n++
		next = ev.Seq
		if ev.Seq < oldest && f.Match(ev) {
			evs = append(evs, ev)
		}
	}
	// A full page ends at its newest event. A short one holds every event
	// the store has up to it, and the store holds every event older than
	// the ring's oldest when it was looked at: the numbers missing up to
	// there were never written. The ring serves the rest.
	if n < limit {
		next = max(next, oldest-1)
	}
	// Events of the page the ring already held are left to it (the next
	// page, or Subscribe, delivers them from there, or from the store if
	// the ring has moved on by then).
	next = min(next, oldest-1)
	return evs, next, nil
}
