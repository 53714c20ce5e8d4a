// Package sandbox is the sandbox manager: it owns the registry of sandboxes
// and drives each one through the seed's state machine
//
//	starting → ready ⇄ running → stopping → stopped
//	    └──────────→ failed (boot failure, VMM crash)
//
// on top of internal/vmm. Create validates an untrusted request, gives the
// sandbox its own directory (data_dir/sandboxes/{id}) and its own writable
// copy of the rootfs (internal/disk), and boots Firecracker in a background
// goroutine; Stop, Remove, Get and List act on the registry; a TTL removes a
// sandbox when it runs out; every state change is published as an event on
// an events.Exchange.
//
// # Checkpoint and restore
//
// Firecracker is given the sandbox's disk ("rootfs.ext4") and vsock socket
// ("vsock.sock") as paths relative to its working directory, the sandbox
// directory, so that a snapshot loads in another sandbox's directory
// against that sandbox's own files. Checkpoint pauses the VM, writes its
// state and memory into a pending snapshot of the catalog
// (internal/snapshot), copies the disk while the VM is still paused,
// resumes it (always, retrying once) and commits the snapshot; a Diff
// layer is merged onto its base after the resume, so every stored snapshot
// is complete. Restore builds a new sandbox from a snapshot: its own disk
// copy, hard links to (or copies of) the memory and state files, its own
// network, and a fresh Firecracker that loads the snapshot and resumes.
//
// # Concurrency
//
// The locks, in the order they are taken (a lock is never taken while
// one later in the list is held):
//
//   - The admission lock (Manager.admit) serializes the reservations of
//     the host-wide budget (reserveBudget); it is taken with no other
//     lock held, and takes the registry lock and each sandbox's mu only
//     one at a time.
//   - A sandbox's operation lock (instance.op, a one-slot semaphore whose
//     wait honours the caller's context) serializes the operations on it:
//     Stop, Remove, Checkpoint and TTL expiry hold it for their whole run,
//     Shutdown for each sandbox it stops or leaves, and Create and Restore
//     (startNew) until the new sandbox's record is durable. Operations on
//     different sandboxes run in parallel. Get and List never take it.
//   - A sandbox's record writer (instance.w.mu) orders its store writes.
//     Manager.flush holds it across the store commit (the fsync) while it
//     writes the sandbox's newest record, or deletes it once the sandbox
//     is removed; startNew holds it while the new record is created, so
//     that the boot's own ready or failed record is written after it. A
//     store write thus holds the record writer and, when an operation
//     writes, that operation's lock: never a sandbox's mu, the registry
//     lock or the exchange's lock.
//   - A sandbox's mu (instance.mu) guards its record, the record's
//     generation, its VMM handle and start time, its TTL timer and its
//     removed and removing flags. It is held only to read the record or
//     decide the next one and to publish that change's event
//     (publishLocked, which also marks the record for the store), never
//     across a store write, a VMM call, a wait or a file system change.
//     Publishing under it keeps each sandbox's events in order.
//   - The registry lock (Manager.mu) guards the set of sandboxes, the
//     slots reserved by creates in progress and the closing flag; it is
//     held briefly, sometimes inside a sandbox's mu (registering it).
//   - The event exchange's lock, which Publish takes, comes last: the
//     manager publishes with a sandbox's mu held. A subscriber's history
//     backfill (events.Options.Backfill, a read of the stored events) runs
//     without the exchange's lock, so a slow backfill delays neither
//     Publish nor any sandbox.
//
// A change is thus decided and published under the sandbox's mu, and
// written afterwards by flush under the record writer, not mu: flush
// copies the newest record under mu and skips a generation a later flush
// has written, so the store never goes back to an older record. The call
// that made a change returns only once flush has written it (or, for a
// change it cannot undo, has failed and logged it; the next flush writes
// the newest record anyway). A change the background goroutine makes
// (ready, failed, an exit) is flushed by that goroutine, which holds no
// operation lock. Get and List take only the registry lock and each
// sandbox's mu, so they never wait behind an operation, a store write, a
// VMM call or an event backfill, and they may show a change before it is
// durable.
//
// No operation holds the operation lock unboundedly: every VMM call made
// under it has its own time limit (a checkpoint's pause, snapshot and
// resumes), and a checkpoint can be preempted: Remove --force and TTL
// expiry cancel it at once, Stop after its graceful timeout; the
// checkpoint then fails with Aborted and the preempting operation kills
// the VMM. A VM a checkpoint cannot resume is killed and its sandbox
// FAILED, never reported READY while paused once the limits have passed.
//
// Every goroutine the manager starts (boot or restore, VMM watcher, TTL
// expiry) is tracked by a WaitGroup; Shutdown stops every sandbox and
// waits for all of them.
//
// # Hostile input
//
// The daemon runs as root, so kernel, initrd and rootfs paths must be
// absolute and resolve (after symlinks) to regular files inside the allowed
// directories; the files are opened without following a final symlink and
// their real path is checked again through the open descriptor. A rejected
// request changes nothing on disk.
package sandbox
