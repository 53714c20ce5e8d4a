package sandbox

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/snapshot"
)

// A re-adopted sandbox's network is verified: intact (or repaired), the
// sandbox comes back READY; lost while the daemon was down, it fails with
// the reason and its VMM is killed, instead of coming back READY with no
// network.
func TestRecoverVerifiesTheNetworkFake(t *testing.T) {
	for _, tc := range []struct {
		name      string
		verifyErr error
		want      State
	}{
		{name: "network intact", want: StateReady},
		{name: "network lost", verifyErr: fmt.Errorf("its network namespace is gone: %w", errdefs.ErrFailedPrecondition),
			want: StateFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := &fakeRuntime{}
			dataDir, st := t.TempDir(), openStore(t, t.TempDir())
			life := func(nw *fakeNetworker) *daemonLife {
				var cat *snapshot.Catalog
				e := newTestEnv(t, dataDir, rt, withCatalog(t, dataDir, &cat, func(c *Config) {
					c.Store, c.OnShutdown, c.DefaultMemoryMiB, c.Network = st, ShutdownLeave, 128, nw
				}))
				return &daemonLife{testEnv: e, st: st}
			}
			first := life(&fakeNetworker{})
			s, err := first.m.Create(t.Context(), CreateRequest{})
			if err != nil {
				t.Fatal(err)
			}
			s = first.waitState(t, s.ID, StateReady, 5*time.Second)
			waitStored(t, st, s.ID, StateReady)
			if err := first.m.Shutdown(ctxT(t, 10*time.Second)); err != nil {
				t.Fatal(err)
			}
			if s.Network.IP == "" {
				t.Fatalf("the sandbox has no network: %+v", s.Network)
			}
			mach := rt.machineOf(t, s.Process.PID)

			nw := &fakeNetworker{verifyErr: tc.verifyErr}
			next := life(nw)
			ctx := ctxT(t, 10*time.Second)
			if err := next.m.Recover(ctx); err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(nw.verified, s.ID) {
				t.Errorf("the network of %s was not verified (verified %v)", s.ID, nw.verified)
			}
			got, err := next.m.Get(ctx, s.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.State != tc.want {
				t.Fatalf("recovered as %s (%q), want %s", got.State, got.FailureReason, tc.want)
			}
			select {
			case <-mach.Done():
				if tc.verifyErr == nil {
					t.Fatal("recovery killed the VMM of a sandbox whose network is intact")
				}
			default:
				if tc.verifyErr != nil {
					t.Fatal("the VMM of a sandbox without its network still runs")
				}
			}
			if tc.verifyErr != nil {
				if !contains(got.FailureReason, "network was lost") || !contains(got.FailureReason, "namespace is gone") {
					t.Errorf("failure reason %q does not say the network was lost and why", got.FailureReason)
				}
				if _, state := storedState(t, st, s.ID); state != string(StateFailed) {
					t.Errorf("stored %q, want failed", state)
				}
			}
		})
	}
}
