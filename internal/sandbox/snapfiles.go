package sandbox

import (
	"context"

	"github.com/firecracker-vmm/firecracker-vmm/internal/snapshot"
)

// mergeDiff writes the memory file out: the base snapshot's memory with
// every data region of a Diff layer written over it.
func mergeDiff(ctx context.Context, baseMem, diffLayer, out string) error {
	return snapshot.MergeDiff(ctx, baseMem, diffLayer, out)
}

// verifyFile checks a snapshot file's size and, with checksum, its checksum
// (the algorithm meta.json names).
func verifyFile(path string, fi snapshot.FileInfo, checksum bool) error {
	return snapshot.VerifyFile(path, fi, checksum)
}
