package daemon

import (
	"context"
	"log/slog"
	"sync"

	"github.com/firecracker-vmm/firecracker-vmm/internal/events"
	"github.com/firecracker-vmm/firecracker-vmm/internal/store"
)

// journalBuffer bounds the events waiting to be written.
const journalBuffer = 4096

// journal writes published events to the state store in the background,
// many per transaction, so that the event history costs no fsync on the
// path of the RPC that caused the event. (Sandbox records are still
// written synchronously by the manager.) Events still queued when the
// daemon is killed are lost from the persisted history; a clean shutdown
// flushes them.
type journal struct {
	st  *store.Store
	log *slog.Logger
	ch  chan events.Event
	// done is closed when the writer goroutine has returned.
	done chan struct{}

	// mu guards closed; Append and close hold it so that nothing is sent on
	// a closed channel.
	mu     sync.Mutex
	closed bool
}

// newJournal starts the writer goroutine; close stops it.
func newJournal(st *store.Store, log *slog.Logger) *journal {
	j := &journal{st: st, log: log, ch: make(chan events.Event, journalBuffer), done: make(chan struct{})}
	go j.run()
	return j
}

// Append queues ev. It never blocks the publisher: when the queue is full
// the event is logged and left out of the persisted history.
func (j *journal) Append(ev events.Event) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil
	}
	select {
	case j.ch <- ev:
	default:
		j.log.Error("event journal full: event not persisted", slog.Uint64("seq", ev.Seq))
	}
	return nil
}

// run writes queued events, batching whatever has accumulated.
func (j *journal) run() {
	defer close(j.done)
	for ev := range j.ch {
		batch := []store.EventRecord{record(ev)}
	more:
		for len(batch) < 512 {
			select {
			case ev, ok := <-j.ch:
				if !ok {
					break more
				}
				batch = append(batch, record(ev))
			default:
				break more
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		if err := j.st.AppendEvents(ctx, batch); err != nil {
			j.log.Error("writing events to the state store", slog.Uint64("first_seq", batch[0].Seq),
				slog.Int("count", len(batch)), slog.Any("error", err))
		}
		cancel()
	}
}

// close flushes the queue and stops the writer.
func (j *journal) close() {
	j.mu.Lock()
	if !j.closed {
		j.closed = true
		close(j.ch)
	}
	j.mu.Unlock()
	<-j.done
}

// record converts an event for the store.
func record(ev events.Event) store.EventRecord {
	return store.EventRecord{
		Seq: ev.Seq, SandboxID: ev.SandboxID, Action: ev.Action, State: ev.State, Time: ev.Time,
		Attributes: ev.Attributes,
	}
}
