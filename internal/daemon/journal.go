package daemon

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/firecracker-vmm/firecracker-vmm/internal/events"
	"github.com/firecracker-vmm/firecracker-vmm/internal/store"
)

// journalBuffer bounds the events waiting to be written, journalBatch the
// events written in one transaction.
const (
	journalBuffer = 4096
	journalBatch  = 512
)

// maxUnwritten bounds the events a run can have published without writing
// them: those queued and the batch being written.
const maxUnwritten = journalBuffer + journalBatch

// journal writes published events to the state store in the background,
// many per transaction, so that the event history costs no fsync on the
// path of the RPC that caused the event. (Sandbox records are still
// written synchronously by the manager.) Events still queued when the
// daemon is killed are lost from the persisted history; a clean shutdown
// flushes them and marks the run as ended cleanly (store.EndRun), and
// resumeSeq skips past any sequence number a killed run may have used.
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
	// lost is set when an event could not be written (queue full, store
	// error): the run then does not end cleanly.
	lost atomic.Bool
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
		j.lost.Store(true)
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
		for len(batch) < journalBatch {
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
			j.lost.Store(true)
			j.log.Error("writing events to the state store", slog.Uint64("first_seq", batch[0].Seq),
				slog.Int("count", len(batch)), slog.Any("error", err))
		}
		cancel()
	}
}

// close flushes the queue, stops the writer and, when every event was
// written, marks the run as ended cleanly.
func (j *journal) close() {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		<-j.done
		return
	}
	j.closed = true
	close(j.ch)
	j.mu.Unlock()
	<-j.done
	if j.lost.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := j.st.EndRun(ctx); err != nil {
		j.log.Error("marking the run as ended cleanly", slog.Any("error", err))
	}
}

// resumeSeq returns the sequence number the event exchange resumes from.
// After a run that did not end cleanly (killed, or events lost), up to
// maxUnwritten events may have been published with numbers the store never
// saw: the sequence is advanced past them, durably, so that a number a
// client has seen is never given to another event.
func resumeSeq(ctx context.Context, st *store.Store, log *slog.Logger) (uint64, error) {
	clean, err := st.BeginRun(ctx)
	if err != nil {
		return 0, err
	}
	seq, err := st.LastEventSeq(ctx)
	if err != nil {
		return 0, err
	}
	if clean {
		return seq, nil
	}
	next := seq + maxUnwritten
	if err := st.AdvanceEventSeq(ctx, next); err != nil {
		return 0, err
	}
	log.Warn("the previous run did not end cleanly: event numbers skip past those it may have used unwritten",
		slog.Uint64("last_written", seq), slog.Uint64("resume_after", next))
	return next, nil
}

// record converts an event for the store.
func record(ev events.Event) store.EventRecord {
	return store.EventRecord{
		Seq: ev.Seq, SandboxID: ev.SandboxID, Action: ev.Action, State: ev.State, Time: ev.Time,
		Attributes: ev.Attributes,
	}
}
