package sandbox

import (
	"context"
	"net/netip"

	"github.com/firecracker-vmm/firecracker-vmm/internal/network"
	"github.com/firecracker-vmm/firecracker-vmm/internal/snapshot"
	"github.com/firecracker-vmm/firecracker-vmm/internal/store"
)

// noNetwork is the Networker of a daemon without networking: sandboxes get
// no NIC (a zero Attachment), and there is nothing to release or list.
type noNetwork struct{}

var _ Networker = noNetwork{}

// Attach implements Networker: no network, no error.
func (noNetwork) Attach(context.Context, string) (network.Attachment, error) {
	return network.Attachment{}, nil
}

// Detach implements Networker.
func (noNetwork) Detach(context.Context, string) error { return nil }

// Reserve implements Networker: there is no pool to take an address from.
func (noNetwork) Reserve(string, netip.Addr) error { return nil }

// ListNetns implements Networker.
func (noNetwork) ListNetns() ([]string, error) { return nil, nil }

// Verify implements Networker: there is nothing to check.
func (noNetwork) Verify(context.Context, string, netip.Addr) error { return nil }

// noSnapshots is the SnapshotCatalog of a daemon whose Firecracker cannot
// take snapshots: there are none, and taking, pinning or deleting one is a
// FailedPrecondition.
type noSnapshots struct{}

var _ SnapshotCatalog = noSnapshots{}

// Begin implements SnapshotCatalog.
func (noSnapshots) Begin(string, string) (*snapshot.Pending, error) { return nil, errNoSnapshots() }

// Commit implements SnapshotCatalog; it is never reached (Begin fails).
func (noSnapshots) Commit(*snapshot.Pending, snapshot.Meta) (snapshot.Meta, error) {
	return snapshot.Meta{}, errNoSnapshots()
}

// Abort implements SnapshotCatalog.
func (noSnapshots) Abort(*snapshot.Pending) {}

// Acquire implements SnapshotCatalog.
func (noSnapshots) Acquire(string) (snapshot.Meta, func(), error) {
	return snapshot.Meta{}, nil, errNoSnapshots()
}

// List implements SnapshotCatalog: there are none.
func (noSnapshots) List(string) []snapshot.Meta { return nil }

// Delete implements SnapshotCatalog.
func (noSnapshots) Delete(context.Context, string) error { return errNoSnapshots() }

// noStore is the Store of a manager that keeps nothing across restarts
// (unit tests, and a daemon that stops its sandboxes at shutdown could use
// it): every write succeeds and nothing is ever listed.
type noStore struct{}

var _ Store = noStore{}

// PutSandbox implements Store.
func (noStore) PutSandbox(context.Context, store.SandboxRecord) error { return nil }

// DeleteSandbox implements Store.
func (noStore) DeleteSandbox(context.Context, string) error { return nil }

// ListSandboxes implements Store: nothing was kept.
func (noStore) ListSandboxes(context.Context) ([]store.SandboxRecord, error) { return nil, nil }

// CreateSandbox implements Store.
func (noStore) CreateSandbox(context.Context, store.SandboxRecord) error { return nil }
