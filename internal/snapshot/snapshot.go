// Package snapshot is the durable catalog of checkpoints on disk:
// data_dir/snapshots/{sandbox-id}/{snapshot-id}/ holding vmstate, mem,
// disk.ext4 and meta.json.
//
// A snapshot is written by the caller into a temporary directory
// snapshots/{sandbox-id}/.tmp-{snapshot-id}/ obtained from Catalog.Begin.
// Catalog.Commit syncs the files, records their sizes and checksums in
// meta.json (written under a temporary name, synced and renamed) and
// renames the directory into place, so a snapshot directory either is
// complete or does not exist under its final name. Catalog.Abort, or any
// failure of Commit, removes everything.
//
// A file's checksum is AlgorithmSHA256Chunked4M: the SHA-256 of the
// SHA-256 digests of its 4 MiB chunks (with the file size), computed in
// parallel and without reading the chunks that lie in a hole of a sparse
// file, yet depending only on the content. meta.json names the algorithm
// of each file; snapshots committed before it existed name none and keep
// their whole-file SHA-256 (AlgorithmSHA256), which VerifyFile still checks.
//
// Open rebuilds the catalog from the directory tree at daemon start. It
// removes leftover temporary directories, and ignores (with a log line but
// without deleting anything) every directory that is not a complete
// snapshot: a meta.json that is missing or invalid (a checksum algorithm
// this version does not know counts as invalid), or a file that is missing
// or not of the recorded size. Checksums are not verified by Open;
// VerifyFile does that for the callers that need it.
//
// Restores pin a snapshot with Catalog.Acquire; Catalog.Delete waits for
// the pins to be released and never removes files a restore is reading.
//
// A Catalog is safe for concurrent use. Its mutex guards only the
// in-memory index and is never held across file system I/O.
package snapshot

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// File names inside a snapshot directory.
const (
	VMStateName = "vmstate"
	MemName     = "mem"
	DiskName    = "disk.ext4"
	MetaName    = "meta.json"
)

// Types of snapshot.
const (
	TypeFull = "full"
	TypeDiff = "diff"
)

// dataFiles are the files every snapshot holds besides meta.json, in the
// order Commit processes them.
var dataFiles = []string{VMStateName, MemName, DiskName}

// tmpPrefix starts the name of a temporary directory (a snapshot being
// written or being deleted). Open removes such directories.
const tmpPrefix = ".tmp-"

// dirMode is the permission of every directory the catalog creates.
const dirMode = 0o700

// classify marks a full file system (or quota) as
// errdefs.ErrResourceExhausted; the message keeps "no space left on
// device".
func classify(err error) error {
	if err == nil || errors.Is(err, errdefs.ErrResourceExhausted) {
		return err
	}
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return fmt.Errorf("%w: %w", err, errdefs.ErrResourceExhausted)
	}
	return err
}
