package bench

import (
	"context"
	"fmt"
	"sync"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
)

// waiters hands events to the goroutine waiting for their sandbox.
type waiters struct {
	mu   sync.Mutex
	got  map[string]*sandboxv1.Event
	ch   map[string]chan *sandboxv1.Event
	err  error
	dead chan struct{}
}

func newWaiters() *waiters {
	return &waiters{got: map[string]*sandboxv1.Event{}, ch: map[string]chan *sandboxv1.Event{}, dead: make(chan struct{})}
}

func (w *waiters) deliver(ev *sandboxv1.Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c, ok := w.ch[ev.GetSandboxId()]; ok {
		c <- ev
		delete(w.ch, ev.GetSandboxId())
		return
	}
	w.got[ev.GetSandboxId()] = ev
}

func (w *waiters) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.err = err
	close(w.dead)
}

// waitReady waits for sandbox id's outcome and fails unless it is ready.
func (w *waiters) waitReady(ctx context.Context, id string) error {
	ev, err := w.wait(ctx, id)
	if err != nil {
		return err
	}
	if ev.GetAction() != "ready" {
		return fmt.Errorf("sandbox %s: %s: %v", id, ev.GetAction(), ev.GetAttributes())
	}
	return nil
}

func (w *waiters) wait(ctx context.Context, id string) (*sandboxv1.Event, error) {
	w.mu.Lock()
	if ev, ok := w.got[id]; ok {
		delete(w.got, id)
		w.mu.Unlock()
		return ev, nil
	}
	c := make(chan *sandboxv1.Event, 1)
	w.ch[id] = c
	w.mu.Unlock()
	select {
	case ev := <-c:
		return ev, nil
	case <-w.dead:
		return nil, fmt.Errorf("event stream ended: %w", w.err)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
