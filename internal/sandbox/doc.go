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
// Operations on one sandbox (Stop, Remove, Checkpoint, TTL expiry) are
// serialized by a per-sandbox operation lock; operations on different
// sandboxes run in parallel. The registry lock and each record's lock are
// held only for short, non-blocking sections, so Get and List never wait
// behind a slow Stop or Checkpoint. Every goroutine the manager starts
// (boot or restore, VMM watcher, TTL expiry) is tracked by a WaitGroup;
// Shutdown stops every sandbox and waits for all of them.
//
// # Hostile input
//
// The daemon runs as root, so kernel, initrd and rootfs paths must be
// absolute and resolve (after symlinks) to regular files inside the allowed
// directories; the files are opened without following a final symlink and
// their real path is checked again through the open descriptor. A rejected
// request changes nothing on disk.
package sandbox
