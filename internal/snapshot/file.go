package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/firecracker-vmm/firecracker-vmm/internal/disk"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// bufSize is the buffer used to checksum and to merge files.
const bufSize = 1 << 20

// openRegular opens path for reading without following a final symlink
// and checks that it is a regular file.
func openRegular(path string) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		_ = f.Close()
		return nil, nil, fmt.Errorf("%s is not a regular file (%s)", path, st.Mode().Type())
	}
	return f, st, nil
}

// syncAndHash fsyncs the regular file at path and returns its size and
// AlgorithmSHA256Chunked4M checksum (Name is left empty).
func syncAndHash(ctx context.Context, path string) (FileInfo, error) {
	f, st, err := openRegular(path)
	if err != nil {
		return FileInfo{}, err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return FileInfo{}, fmt.Errorf("fsync %s: %w", path, err)
	}
	sum, err := checksum(ctx, f, st.Size(), AlgorithmSHA256Chunked4M)
	if err != nil {
		return FileInfo{}, fmt.Errorf("checksum %s: %w", path, err)
	}
	return FileInfo{Size: st.Size(), Algorithm: AlgorithmSHA256Chunked4M, SHA256: sum}, nil
}

// VerifyFile checks the file at path against fi: it must be a regular file
// (not a symlink) of size fi.Size and, when checksum is set, have the
// checksum fi.SHA256 computed with fi.Algorithm (the legacy whole-file
// SHA-256 when empty, or AlgorithmSHA256Chunked4M). A mismatch, a missing
// file or, with checksum, an unknown algorithm is
// errdefs.ErrFailedPrecondition.
func VerifyFile(path string, fi FileInfo, checksum bool) error {
	return VerifyFileContext(context.Background(), path, fi, checksum)
}

// VerifyFileContext is VerifyFile bounded by ctx while checksumming.
func VerifyFileContext(ctx context.Context, path string, fi FileInfo, verifySum bool) error {
	if verifySum && !knownAlgorithm(fi.Algorithm) {
		return fmt.Errorf("snapshot file %s: unknown checksum algorithm %s: %w", path, strconv.QuoteToASCII(fi.Algorithm),
			errdefs.ErrFailedPrecondition)
	}
	f, st, err := openRegular(path)
	if err != nil {
		return fmt.Errorf("snapshot file: %w: %w", err, errdefs.ErrFailedPrecondition)
	}
	defer f.Close()
	if st.Size() != fi.Size {
		return fmt.Errorf("snapshot file %s has %d bytes, meta.json says %d: %w", path, st.Size(), fi.Size,
			errdefs.ErrFailedPrecondition)
	}
	if !verifySum {
		return nil
	}
	sum, err := checksum(ctx, f, fi.Size, fi.Algorithm)
	if errors.Is(err, errFileChanged) {
		return fmt.Errorf("snapshot file %s: checksum: %w: %w", path, err, errdefs.ErrFailedPrecondition)
	}
	if err != nil {
		return fmt.Errorf("snapshot file %s: checksum: %w", path, err)
	}
	if sum != fi.SHA256 {
		return fmt.Errorf("snapshot file %s: %s %s, meta.json says %s: %w", path, algorithmName(fi.Algorithm), sum, fi.SHA256,
			errdefs.ErrFailedPrecondition)
	}
	return nil
}

// MergeDiff makes out a complete memory image from a full one and a diff
// layer, as `snapshot-editor edit-memory rebase` does: out becomes a clone
// of baseMem (reflink where possible, see disk.Clone), then every data
// region of the sparse file diffLayer (found with SEEK_DATA/SEEK_HOLE) is
// written onto out at the same offset. Both inputs must have the same size
// (else errdefs.ErrInvalidArgument); out must not exist, is synced before
// MergeDiff returns and is removed on any failure. A full file system is
// errdefs.ErrResourceExhausted.
//
// The diff layer's holes are what stays from the base, so diffLayer must
// live on a file system that reports holes (ext4, XFS, Btrfs, tmpfs, ...).
func MergeDiff(ctx context.Context, baseMem, diffLayer, out string) error {
	if err := mergeDiff(ctx, baseMem, diffLayer, out); err != nil {
		return fmt.Errorf("snapshot: merge diff layer %s onto %s: %w", diffLayer, baseMem, classify(err))
	}
	return nil
}

func mergeDiff(ctx context.Context, baseMem, diffLayer, out string) (err error) {
	diff, dst, err := openRegular(diffLayer)
	if err != nil {
		return err
	}
	defer diff.Close()
	bst, err := os.Stat(baseMem)
	if err != nil {
		return err
	}
	if bst.Size() != dst.Size() {
		return fmt.Errorf("base has %d bytes, diff layer %d: %w", bst.Size(), dst.Size(), errdefs.ErrInvalidArgument)
	}
	if err := disk.Clone(ctx, baseMem, out); err != nil {
		return err
	}
	f, err := os.OpenFile(out, os.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		_ = os.Remove(out)
		return err
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(out)
		}
	}()
	size := dst.Size()
	buf := make([]byte, bufSize)
	for off := int64(0); off < size; {
		start, end, ok, err := dataRegion(diff, off, size)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		for start < end {
			if err := ctx.Err(); err != nil {
				return err
			}
			b := buf[:min(int64(len(buf)), end-start)]
			n, err := diff.ReadAt(b, start)
			if n == 0 {
				if err == nil || errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				return fmt.Errorf("read diff layer at %d: %w", start, err)
			}
			if _, err := f.WriteAt(b[:n], start); err != nil {
				return err
			}
			start += int64(n)
		}
		off = end
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", out, err)
	}
	return nil
}

// dataRegion returns the next data region [start, end) of f at or after
// off, or ok false when only a hole remains.
func dataRegion(f *os.File, off, size int64) (start, end int64, ok bool, err error) {
	fd := int(f.Fd())
	start, err = unix.Seek(fd, off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO):
		return 0, 0, false, nil
	case err != nil:
		return 0, 0, false, fmt.Errorf("seek data in diff layer: %w", err)
	case start >= size:
		return 0, 0, false, nil
	}
	end, err = unix.Seek(fd, start, unix.SEEK_HOLE)
	if err != nil {
		return 0, 0, false, fmt.Errorf("seek hole in diff layer: %w", err)
	}
	return start, min(end, size), true, nil
}
