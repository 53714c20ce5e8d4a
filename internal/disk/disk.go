// Package disk gives a sandbox its own writable copy of a disk image.
//
// Clone makes the copy with a reflink (the FICLONE ioctl) when the
// filesystem can share extents copy-on-write (XFS with reflink, Btrfs,
// bcachefs, ...), which is instant and takes no space, and otherwise with a
// sparse copy: only the data extents found with SEEK_DATA/SEEK_HOLE are
// copied (copy_file_range, falling back to read/write), so holes stay holes.
//
// The destination is created with O_EXCL and mode 0600, synced to disk
// before Clone returns (unless Options.NoSync), and removed again on any
// failure, including a cancelled context (which is checked between chunks).
//
// It imports the standard library and golang.org/x/sys/unix only.
package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Method says how a clone was made.
type Method string

// The clone methods.
const (
	// MethodReflink: the copy shares the source's extents copy-on-write.
	MethodReflink Method = "reflink"
	// MethodSparseCopy: the data extents were copied, holes kept.
	MethodSparseCopy Method = "sparse-copy"
)

// chunkSize is the most copied between two context checks.
const chunkSize = 8 << 20

// fileMode is the destination's permission bits.
const fileMode = 0o600

// Options tune CloneFile.
type Options struct {
	// NoReflink skips the FICLONE attempt and always makes a sparse copy.
	NoReflink bool
	// NoSync skips the fsync of the copy and of its directory, for copies
	// whose durability does not matter or is ensured later: a sandbox's
	// own disk (the VM that writes it does not survive the host either),
	// or a snapshot file that the catalog syncs when it commits.
	NoSync bool
}

// Clone gives dst its own copy of the regular file src (see the package
// documentation). dst must not exist.
func Clone(ctx context.Context, src, dst string) error {
	_, err := CloneMethod(ctx, src, dst)
	return err
}

// CloneMethod is Clone that also reports which method was used.
func CloneMethod(ctx context.Context, src, dst string) (Method, error) {
	return CloneWith(ctx, src, dst, Options{})
}

// CloneWith is CloneMethod with options.
func CloneWith(ctx context.Context, src, dst string, opts Options) (Method, error) {
	f, err := os.OpenFile(src, os.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("disk: clone %s: %w", src, err)
	}
	defer f.Close()
	return CloneFile(ctx, f, dst, opts)
}

// CloneFile copies the already opened regular file src into the new file
// dst. Callers that validated src (for example after resolving symlinks)
// pass the descriptor they checked, so that the copy is made from exactly
// that file. src's file offset is not used.
func CloneFile(ctx context.Context, src *os.File, dst string, opts Options) (Method, error) {
	m, err := cloneFile(ctx, src, dst, opts)
	if err != nil {
		return "", fmt.Errorf("disk: clone %s to %s: %w", src.Name(), dst, err)
	}
	return m, nil
}

func cloneFile(ctx context.Context, src *os.File, dst string, opts Options) (method Method, err error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	st, err := src.Stat()
	if err != nil {
		return "", err
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("source is not a regular file (%s)", st.Mode().Type())
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, fileMode)
	if err != nil {
		return "", err
	}
	defer func() {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(dst)
		}
	}()
	method = MethodSparseCopy
	reflinked := false
	if !opts.NoReflink {
		if reflinked, err = reflink(src, out); err != nil {
			return "", err
		}
	}
	if reflinked {
		method = MethodReflink
	} else if err := sparseCopy(ctx, src, out, st.Size()); err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if opts.NoSync {
		return method, nil
	}
	if err := out.Sync(); err != nil {
		return "", fmt.Errorf("fsync: %w", err)
	}
	syncDir(filepath.Dir(dst))
	return method, nil
}

// reflink tries FICLONE. It reports false (and no error) when the
// filesystem cannot share extents between these files.
func reflink(src, dst *os.File) (bool, error) {
	err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd()))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOTSUP), errors.Is(err, unix.EXDEV),
		errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOTTY), errors.Is(err, unix.ENOSYS),
		errors.Is(err, unix.EPERM):
		// Not supported here (or not for these two files): copy instead.
		return false, nil
	default:
		return false, fmt.Errorf("FICLONE: %w", err)
	}
}

// sparseCopy copies the data extents of src (size bytes) into the empty
// file dst and sizes dst to size, so that holes stay holes.
func sparseCopy(ctx context.Context, src, dst *os.File, size int64) error {
	if err := dst.Truncate(size); err != nil {
		return fmt.Errorf("truncate: %w", err)
	}
	sfd := int(src.Fd())
	useCFR := true
	var buf []byte
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		start, end, ok, err := nextData(sfd, off, size)
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		for start < end {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(end-start, chunkSize)
			var copied int64
			if useCFR {
				copied, err = copyRange(src, dst, start, n)
				if errors.Is(err, errNoCopyRange) {
					useCFR = false
					continue
				}
			} else {
				if buf == nil {
					buf = make([]byte, 1<<20)
				}
				copied, err = readWrite(src, dst, start, n, buf)
			}
			if err != nil {
				return err
			}
			start += copied
		}
		off = end
	}
	return nil
}

// nextData returns the next data extent [start, end) at or after off, or
// ok false when only a hole remains. A filesystem without SEEK_DATA has
// one extent: the rest of the file.
func nextData(fd int, off, size int64) (start, end int64, ok bool, err error) {
	start, err = unix.Seek(fd, off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO):
		return 0, 0, false, nil
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.EOPNOTSUPP):
		return off, size, true, nil
	case err != nil:
		return 0, 0, false, fmt.Errorf("seek data: %w", err)
	}
	if start >= size {
		return 0, 0, false, nil
	}
	end, err = unix.Seek(fd, start, unix.SEEK_HOLE)
	if err != nil {
		return 0, 0, false, fmt.Errorf("seek hole: %w", err)
	}
	return start, min(end, size), true, nil
}

// errNoCopyRange says copy_file_range cannot be used for these files.
var errNoCopyRange = errors.New("copy_file_range not usable")

// copyRange copies up to n bytes at off with copy_file_range.
func copyRange(src, dst *os.File, off, n int64) (int64, error) {
	roff, woff := off, off
	for {
		c, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &woff, int(n), 0)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EXDEV), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EOPNOTSUPP),
			errors.Is(err, unix.EINVAL):
			return 0, errNoCopyRange
		case err != nil:
			return 0, fmt.Errorf("copy_file_range: %w", err)
		case c == 0:
			return 0, fmt.Errorf("copy_file_range at %d: %w", off, io.ErrUnexpectedEOF)
		}
		return int64(c), nil
	}
}

// readWrite copies up to n bytes at off through buf, skipping blocks of
// zeros so that they become holes.
func readWrite(src, dst *os.File, off, n int64, buf []byte) (int64, error) {
	b := buf[:min(n, int64(len(buf)))]
	r, err := src.ReadAt(b, off)
	if r == 0 {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, fmt.Errorf("read at %d: %w", off, err)
	}
	b = b[:r]
	const block = 4096
	for i := 0; i < len(b); i += block {
		blk := b[i:min(i+block, len(b))]
		if isZero(blk) {
			continue // dst was truncated to size: this range already reads as zeros
		}
		if _, err := dst.WriteAt(blk, off+int64(i)); err != nil {
			return 0, fmt.Errorf("write at %d: %w", off+int64(i), err)
		}
	}
	return int64(r), nil
}

var zeroBlock [4096]byte

func isZero(b []byte) bool { return bytes.Equal(b, zeroBlock[:len(b)]) }

// syncDir makes the new directory entry durable (best effort).
func syncDir(dir string) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	_ = d.Sync()
	_ = d.Close()
}
