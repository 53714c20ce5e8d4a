package daemon

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/events"
	"github.com/firecracker-vmm/firecracker-vmm/internal/store"
)

// A run that ends through journal.close resumes where it stopped; a run
// that dies (no close) makes the next one skip every number it may have
// handed out without writing.
func TestResumeSeqAfterCleanAndUncleanRuns(t *testing.T) {
	ctx := t.Context()
	path := store.Path(t.TempDir())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	run := func(publish int, clean bool) (first, last uint64) {
		t.Helper()
		st, err := store.Open(path, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		seq, err := resumeSeq(ctx, st, log)
		if err != nil {
			t.Fatal(err)
		}
		jr := newJournal(st, log)
		for i := range publish {
			if err := jr.Append(events.Event{Seq: seq + uint64(i) + 1, SandboxID: "sb", Action: "a", Time: time.Now()}); err != nil {
				t.Fatal(err)
			}
		}
		if clean {
			jr.close()
		} else {
			// A killed daemon: the writer is stopped without EndRun.
			jr.lost.Store(true)
			jr.close()
		}
		return seq, seq + uint64(publish)
	}
	if first, _ := run(3, true); first != 0 {
		t.Fatalf("a new store resumes after %d, want 0", first)
	}
	if first, last := run(2, false); first != 3 || last != 5 {
		t.Fatalf("second run numbered %d..%d, want 4..5", first+1, last)
	}
	if first, _ := run(1, true); first != 5+maxUnwritten {
		t.Fatalf("after an unclean run the sequence resumes after %d, want %d", first, 5+maxUnwritten)
	}
	if first, _ := run(0, true); first != 6+maxUnwritten {
		t.Fatalf("after a clean run the sequence resumes after %d, want %d", first, 6+maxUnwritten)
	}
}
