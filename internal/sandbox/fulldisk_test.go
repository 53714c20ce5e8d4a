package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/store"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// fillFS writes path until its file system is full; the returned function
// frees the space again.
func fillFS(t *testing.T, path string) (free func()) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	blk := bytes.Repeat([]byte{'x'}, 64<<10)
	for {
		if _, err := f.Write(blk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	// Partial blocks: fill up the last pages too.
	for _, n := range []int{4096, 512, 1} {
		for {
			if _, err := f.Write(blk[:n]); err != nil {
				break
			}
		}
	}
	return func() {
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
}

// With the store or the data dir on a full file system, Stop, Remove and
// Create fail with ResourceExhausted, and what the store holds stays
// true: a Stop or Remove whose record could not be written leaves the
// stored record as it was (and a failed Remove releases nothing); a
// Create leaves nothing at all. Runs in a private mount namespace, with
// the data dir on a small tmpfs.
func TestFullDiskFake(t *testing.T) {
	if !testutil.InMountNamespace(t) {
		return
	}
	dataDir := testutil.MountTmpfs(t, "", "32m")
	st := openStore(t, t.TempDir())
	// bbolt overwrites the pages it has, so a full file system under the
	// store fails its writes only once the file must grow: the store's
	// full disk is injected (as bbolt reports it), the data dir's is real.
	fs := &fullStore{Store: st}
	rt := &fakeRuntime{}
	e := newTestEnv(t, dataDir, rt, func(c *Config) { c.Store = fs })
	ctx := ctxT(t, 20*time.Second)
	records := func() []string {
		t.Helper()
		recs, err := st.ListSandboxes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range recs {
			out = append(out, r.ID+" "+r.State+removingMark(r))
		}
		return out
	}
	exhausted := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, errdefs.ErrResourceExhausted) {
			t.Errorf("%s on a full disk: %v, want ResourceExhausted", what, err)
		}
	}

	s, err := e.m.Create(ctx, CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	e.waitState(t, s.ID, StateReady, 5*time.Second)
	waitStored(t, st, s.ID, StateReady)
	want := []string{s.ID + " ready"}

	// The store's file system is full.
	fs.full.Store(true)
	_, err = e.m.Stop(ctx, s.ID, 0)
	exhausted("stop", err)
	if got := records(); !slices.Equal(got, want) {
		t.Errorf("stored after the failed stop: %v, want %v", got, want)
	}
	if got, _ := e.m.Get(ctx, s.ID); got.State != StateStopped {
		t.Errorf("after the failed stop the sandbox is %s; its VMM is stopped", got.State)
	}
	_, err = e.m.Stop(ctx, s.ID, 0)
	exhausted("stop again", err)
	exhausted("remove", e.m.Remove(ctx, s.ID, true))
	if got := records(); !slices.Equal(got, want) {
		t.Errorf("stored after the failed remove: %v, want %v", got, want)
	}
	if _, err := e.m.Get(ctx, s.ID); err != nil {
		t.Errorf("after the failed remove: %v", err)
	}
	if got := e.sandboxDirs(t); !slices.Equal(got, []string{s.ID}) {
		t.Errorf("sandbox directories after the failed remove: %v", got)
	}
	// Create: the rootfs is copied, the record cannot be written.
	_, err = e.m.Create(ctx, CreateRequest{})
	exhausted("create (store write)", err)

	// The data dir's file system is full instead.
	freeData := fillFS(t, filepath.Join(dataDir, "fill"))
	fs.full.Store(false)
	_, err = e.m.Create(ctx, CreateRequest{})
	exhausted("create (rootfs copy)", err)
	if got := e.sandboxDirs(t); !slices.Equal(got, []string{s.ID}) {
		t.Errorf("sandbox directories after the failed creates: %v", got)
	}
	if l, _ := e.m.List(ctx, ListFilter{}); len(l) != 1 || l[0].ID != s.ID {
		t.Errorf("sandboxes after the failed creates: %v", l)
	}
	if got := records(); !slices.Equal(got, want) {
		t.Errorf("stored after the failed creates: %v, want %v", got, want)
	}
	freeData()

	// With space again, a retried Stop stores the stop, and Remove works.
	if _, err := e.m.Stop(ctx, s.ID, 0); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("stop of the stopped sandbox: %v, want FailedPrecondition", err)
	}
	if got, want := records(), []string{s.ID + " stopped"}; !slices.Equal(got, want) {
		t.Errorf("stored after the retried stop: %v, want %v", got, want)
	}
	if err := e.m.Remove(ctx, s.ID, false); err != nil {
		t.Fatal(err)
	}
	if got := records(); len(got) != 0 {
		t.Errorf("stored after remove: %v", got)
	}
	if got := e.sandboxDirs(t); len(got) != 0 {
		t.Errorf("sandbox directories after remove: %v", got)
	}
}

// fullStore is a store whose writes fail with ENOSPC, wrapped the way
// bbolt reports a failed write, while full is set.
type fullStore struct {
	*store.Store
	full atomic.Bool
}

// errFull is the error of a write to a full store.
func (f *fullStore) errFull() error {
	if !f.full.Load() {
		return nil
	}
	return fmt.Errorf("store: %w", &os.PathError{Op: "write", Path: "state.db", Err: syscall.ENOSPC})
}

func (f *fullStore) PutSandbox(ctx context.Context, r store.SandboxRecord) error {
	if err := f.errFull(); err != nil {
		return err
	}
	return f.Store.PutSandbox(ctx, r)
}

func (f *fullStore) CreateSandbox(ctx context.Context, r store.SandboxRecord) error {
	if err := f.errFull(); err != nil {
		return err
	}
	return f.Store.CreateSandbox(ctx, r)
}

func (f *fullStore) DeleteSandbox(ctx context.Context, id string) error {
	if err := f.errFull(); err != nil {
		return err
	}
	return f.Store.DeleteSandbox(ctx, id)
}

// removingMark is " removing" for a record that says so.
func removingMark(r store.SandboxRecord) string {
	if r.Removing {
		return " removing"
	}
	return ""
}
