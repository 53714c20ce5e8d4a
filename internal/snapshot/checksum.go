package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
)

// Checksum algorithms, the values of FileInfo.Algorithm.
const (
	// AlgorithmSHA256 is the legacy checksum: the SHA-256 of the whole
	// file, read sequentially. meta.json files written before chunked
	// checksums record no algorithm, which means this one.
	AlgorithmSHA256 = ""
	// AlgorithmSHA256Chunked4M is the checksum Commit records: the file is
	// cut into chunks of 4 MiB (the last one shorter), each chunk is
	// hashed with SHA-256, and the checksum is
	//
	//	SHA-256("sha256-chunked-4m\n" || decimal size || "\n" || digest_0 || digest_1 || ...)
	//
	// It depends only on the content: holes count as the zero bytes they
	// read as. Chunks are hashed in parallel and those lying entirely in
	// a hole (SEEK_DATA/SEEK_HOLE) are not read.
	AlgorithmSHA256Chunked4M = "sha256-chunked-4m"
)

// chunkSize is the chunk of AlgorithmSHA256Chunked4M.
const chunkSize = 4 << 20

// maxHashWorkers bounds the goroutines hashing the chunks of one file.
const maxHashWorkers = 8

// errFileChanged is why a checksum fails when the file turns out shorter
// or longer than its size when it was opened.
var errFileChanged = errors.New("file changed while being read")

// knownAlgorithm reports whether VerifyFile can check a checksum of
// algorithm a.
func knownAlgorithm(a string) bool {
	return a == AlgorithmSHA256 || a == AlgorithmSHA256Chunked4M
}

// checksum returns the hex digest of algorithm of f, a regular file of
// size bytes (as its Stat said), bounded by ctx. The file must not change
// while it is read; a file that turns out shorter or longer is an error.
func checksum(ctx context.Context, f *os.File, size int64, algorithm string) (string, error) {
	switch algorithm {
	case AlgorithmSHA256:
		sum, n, err := hashFile(ctx, f)
		if err != nil {
			return "", err
		}
		if n != size {
			return "", fmt.Errorf("read %d bytes, file had %d: %w", n, size, errFileChanged)
		}
		return sum, nil
	case AlgorithmSHA256Chunked4M:
		sum, err := chunkedChecksum(ctx, f, size)
		if err != nil {
			return "", err
		}
		// Chunks are read by offset up to size: a file that grew meanwhile
		// would go unnoticed without this.
		if st, err := f.Stat(); err != nil {
			return "", err
		} else if st.Size() != size {
			return "", fmt.Errorf("file has %d bytes, had %d: %w", st.Size(), size, errFileChanged)
		}
		return sum, nil
	default:
		return "", fmt.Errorf("unknown checksum algorithm %q", algorithm)
	}
}

// hashFile returns the hex SHA-256 of f's content from offset 0 and the
// number of bytes read, checking ctx between 1 MiB chunks
// (AlgorithmSHA256).
func hashFile(ctx context.Context, f *os.File) (string, int64, error) {
	h := sha256.New()
	buf := make([]byte, bufSize)
	var off int64
	for {
		if err := ctx.Err(); err != nil {
			return "", off, err
		}
		n, err := f.ReadAt(buf, off)
		h.Write(buf[:n])
		off += int64(n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", off, err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), off, nil
}

// chunkedChecksum returns the hex AlgorithmSHA256Chunked4M checksum of the
// first size bytes of f. Every goroutine it starts has ended when it
// returns.
func chunkedChecksum(ctx context.Context, f *os.File, size int64) (string, error) {
	if size < 0 {
		return "", fmt.Errorf("negative size %d", size)
	}
	n := int((size + chunkSize - 1) / chunkSize)
	digests := make([][sha256.Size]byte, n)
	var work []int // chunks holding data
	var shortZero *[sha256.Size]byte
	for i, data := range dataChunks(f, size, n) {
		switch length := chunkLen(i, size); {
		case data:
			work = append(work, i)
		case length == chunkSize:
			digests[i] = zeroChunkDigest()
		default: // the last chunk, shorter
			if shortZero == nil {
				d := zeroDigest(length)
				shortZero = &d
			}
			digests[i] = *shortZero
		}
	}
	if err := hashChunks(ctx, f, size, work, digests); err != nil {
		return "", err
	}
	h := sha256.New()
	io.WriteString(h, AlgorithmSHA256Chunked4M+"\n"+strconv.FormatInt(size, 10)+"\n")
	for i := range digests {
		h.Write(digests[i][:])
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// chunkLen returns the length of chunk i of a file of size bytes.
func chunkLen(i int, size int64) int64 {
	return min(chunkSize, size-int64(i)*chunkSize)
}

// dataChunks reports, for each of the n chunks of the first size bytes of
// f, whether it holds data according to SEEK_DATA/SEEK_HOLE; the others lie
// entirely in a hole. Where seeking fails (a file system without
// SEEK_DATA, say) every chunk from there on counts as data, which is
// always correct, only slower.
func dataChunks(f *os.File, size int64, n int) []bool {
	data := make([]bool, n)
	for off := int64(0); off < size; {
		start, end, ok, err := dataRegion(f, off, size)
		if err != nil {
			for i := int(off / chunkSize); i < n; i++ {
				data[i] = true
			}
			break
		}
		if !ok {
			break
		}
		for i := start / chunkSize; i <= (end-1)/chunkSize; i++ {
			data[i] = true
		}
		// The chunk holding end-1 is marked already: look for data from
		// the next chunk on, which bounds the seeks by the chunk count
		// however fragmented the file is.
		off = (end + chunkSize - 1) / chunkSize * chunkSize
	}
	return data
}

// zeroChunkDigest is the SHA-256 of chunkSize zero bytes.
var zeroChunkDigest = sync.OnceValue(func() [sha256.Size]byte { return zeroDigest(chunkSize) })

// zeroBlock is a source of zero bytes for zeroDigest.
var zeroBlock [64 << 10]byte

// zeroDigest returns the SHA-256 of n zero bytes.
func zeroDigest(n int64) [sha256.Size]byte {
	h := sha256.New()
	for n > 0 {
		k := min(n, int64(len(zeroBlock)))
		h.Write(zeroBlock[:k])
		n -= k
	}
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}

// hashChunks sets digests[i] to the SHA-256 of chunk i of f for every i
// in work, reading the chunks with ReadAt from min(GOMAXPROCS, 8)
// goroutines, which check ctx between chunks. It returns the first error
// (ctx's when it ends) after every goroutine has ended.
func hashChunks(ctx context.Context, f *os.File, size int64, work []int, digests [][sha256.Size]byte) error {
	if len(work) == 0 {
		return ctx.Err()
	}
	var (
		next     atomic.Int64 // index into work of the next chunk to hash
		stop     atomic.Bool  // set on the first failure
		wg       sync.WaitGroup
		failOnce sync.Once
		failure  error
	)
	fail := func(err error) {
		failOnce.Do(func() { failure = err })
		stop.Store(true)
	}
	for range min(runtime.GOMAXPROCS(0), maxHashWorkers, len(work)) {
		wg.Go(func() {
			h := sha256.New()
			buf := make([]byte, bufSize)
			for !stop.Load() {
				k := next.Add(1) - 1
				if k >= int64(len(work)) {
					return
				}
				if err := ctx.Err(); err != nil {
					fail(err)
					return
				}
				i := work[k]
				if err := hashChunk(f, int64(i)*chunkSize, chunkLen(i, size), h, buf); err != nil {
					fail(err)
					return
				}
				h.Sum(digests[i][:0])
			}
		})
	}
	wg.Wait()
	return failure
}

// hashChunk resets h and writes into it the length bytes of f at off,
// read through buf.
func hashChunk(f *os.File, off, length int64, h hash.Hash, buf []byte) error {
	h.Reset()
	for length > 0 {
		b := buf[:min(int64(len(buf)), length)]
		n, err := f.ReadAt(b, off)
		h.Write(b[:n])
		if n < len(b) {
			if err == nil || errors.Is(err, io.EOF) {
				return fmt.Errorf("read at %d: end of file before %d: %w", off+int64(n), off+length, errFileChanged)
			}
			return fmt.Errorf("read at %d: %w", off+int64(n), err)
		}
		off += int64(n)
		length -= int64(n)
	}
	return nil
}

// algorithmName names algorithm a in messages.
func algorithmName(a string) string {
	if a == AlgorithmSHA256 {
		return "sha256"
	}
	return a
}
