package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

const mib = 1 << 20

// chunkedSum is AlgorithmSHA256Chunked4M of b, straight from its
// definition.
func chunkedSum(b []byte) string {
	outer := sha256.New()
	fmt.Fprintf(outer, "sha256-chunked-4m\n%d\n", len(b))
	for off := 0; off < len(b); off += 4 * mib {
		d := sha256.Sum256(b[off:min(off+4*mib, len(b))])
		outer.Write(d[:])
	}
	return hex.EncodeToString(outer.Sum(nil))
}

// region is data at an offset of a sparse test file.
type region struct {
	off  int64
	data []byte
}

// writeSparse creates path as a sparse file of size bytes holding only
// regions, and returns its content.
func writeSparse(t testing.TB, path string, size int64, regions []region) []byte {
	t.Helper()
	content := make([]byte, size)
	var rs []testutil.Region
	for _, r := range regions {
		copy(content[r.off:], r.data)
		rs = append(rs, testutil.Region{Off: r.off, Data: r.data})
	}
	testutil.WriteSparse(t, path, size, rs...)
	return content
}

// fileChecksum opens path and returns its checksum with algorithm.
func fileChecksum(t *testing.T, path, algorithm string) string {
	t.Helper()
	f, st, err := openRegular(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s, err := checksum(context.Background(), f, st.Size(), algorithm)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// patch writes b at off in path.
func patch(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestChunkedChecksum(t *testing.T) {
	one := func(c byte) []byte { return []byte{c} }
	for _, tc := range []struct {
		desc    string
		size    int64
		regions []region
	}{
		{"empty", 0, nil},
		{"one byte", 1, []region{{0, one('a')}}},
		{"one zero byte hole", 1, nil},
		{"4 MiB-1", 4*mib - 1, []region{{0, []byte("head")}, {4*mib - 2, one('z')}}},
		{"4 MiB", 4 * mib, []region{{0, one('a')}, {4*mib - 1, one('z')}}},
		{"4 MiB+1 data in last byte", 4*mib + 1, []region{{4 * mib, one('z')}}},
		{"4 MiB+1 data in first byte", 4*mib + 1, []region{{0, one('a')}}},
		{"13 MiB data at chunk boundaries", 13 * mib, []region{
			{4*mib - 1, []byte("ab")}, // ends chunk 0, starts chunk 1; chunk 2 is a hole
			{12 * mib, one('c')},
			{13*mib - 1, one('d')},
		}},
		{"13 MiB all hole", 13 * mib, nil},
		{"13 MiB data only in first chunk", 13 * mib, []region{{mib, make([]byte, 64<<10)}, {2 * mib, []byte("x")}}},
		{"13 MiB zeros written in a chunk", 13 * mib, []region{{8 * mib, make([]byte, 4*mib)}}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			dir := t.TempDir()
			sparse, dense := filepath.Join(dir, "sparse"), filepath.Join(dir, "dense")
			content := writeSparse(t, sparse, tc.size, tc.regions)
			if err := os.WriteFile(dense, content, 0o600); err != nil {
				t.Fatal(err)
			}
			want := chunkedSum(content)
			if got := fileChecksum(t, sparse, AlgorithmSHA256Chunked4M); got != want {
				t.Fatalf("sparse checksum %s, want %s", got, want)
			}
			if got := fileChecksum(t, dense, AlgorithmSHA256Chunked4M); got != want {
				t.Fatalf("dense checksum %s, want %s", got, want)
			}
			if got := fileChecksum(t, sparse, AlgorithmSHA256); got != sum(content) {
				t.Fatalf("legacy checksum %s, want %s", got, sum(content))
			}

			// Holes are found where nothing was written (when the file
			// system reports them).
			f, _, err := openRegular(sparse)
			if err != nil {
				t.Fatal(err)
			}
			n := int((tc.size + chunkSize - 1) / chunkSize)
			got := dataChunks(f, tc.size, n)
			f.Close()
			wantData := make([]bool, n)
			for _, r := range tc.regions {
				for i := r.off / chunkSize; i <= (r.off+int64(len(r.data))-1)/chunkSize; i++ {
					wantData[i] = true
				}
			}
			if !reflect.DeepEqual(got, wantData) {
				if slices.Contains(got, false) {
					t.Fatalf("data chunks %v, want %v", got, wantData)
				}
				t.Logf("the file system reports no holes (data chunks %v)", got)
			}

			// Changing a byte of data, or writing one into a hole, changes
			// the checksum.
			if len(tc.regions) > 0 {
				r := tc.regions[0]
				b := []byte{r.data[0] ^ 0xff}
				patch(t, sparse, r.off, b)
				changed := fileChecksum(t, sparse, AlgorithmSHA256Chunked4M)
				if changed == want {
					t.Fatal("changing a byte of data left the checksum alone")
				}
				content[r.off] = b[0]
				if changed != chunkedSum(content) {
					t.Fatalf("checksum after a change %s, want %s", changed, chunkedSum(content))
				}
				patch(t, sparse, r.off, r.data[:1])
				content[r.off] = r.data[0]
			}
			if hole := firstHole(tc.size, tc.regions); hole >= 0 {
				patch(t, sparse, hole, one(1))
				changed := fileChecksum(t, sparse, AlgorithmSHA256Chunked4M)
				if changed == want {
					t.Fatalf("writing a byte into the hole at %d left the checksum alone", hole)
				}
				content[hole] = 1
				if changed != chunkedSum(content) {
					t.Fatalf("checksum after filling a hole %s, want %s", changed, chunkedSum(content))
				}
			}
		})
	}
}

// firstHole returns the first offset below size that no region covers,
// preferring one in a chunk no region touches, or -1.
func firstHole(size int64, regions []region) int64 {
	covered := func(off int64) bool {
		for _, r := range regions {
			if r.off <= off && off < r.off+int64(len(r.data)) {
				return true
			}
		}
		return false
	}
	touched := func(off int64) bool {
		c := off / chunkSize
		for _, r := range regions {
			if r.off/chunkSize <= c && c <= (r.off+int64(len(r.data))-1)/chunkSize {
				return true
			}
		}
		return false
	}
	for off := int64(0); off < size; off += 4096 {
		if !touched(off) {
			return min(off+17, size-1) // anywhere inside
		}
	}
	for off := range size {
		if !covered(off) {
			return off
		}
	}
	return -1
}

func TestDataChunksWithoutSeekData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	writeSparse(t, path, 9*mib, nil)
	f, _, err := openRegular(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Close() // seeking fails: everything counts as data
	if got := dataChunks(f, 9*mib, 3); !reflect.DeepEqual(got, []bool{true, true, true}) {
		t.Fatalf("data chunks after a failed seek %v, want all", got)
	}
}

func TestChecksumFileChanged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	writeSparse(t, path, 5*mib, []region{{mib, []byte("x")}})
	for _, alg := range []string{AlgorithmSHA256, AlgorithmSHA256Chunked4M} {
		for _, size := range []int64{5*mib - 1, 5*mib + 1, 13 * mib} {
			f, _, err := openRegular(path)
			if err != nil {
				t.Fatal(err)
			}
			_, err = checksum(context.Background(), f, size, alg)
			f.Close()
			if !errors.Is(err, errFileChanged) {
				t.Errorf("checksum %q of a %d-byte file said to have %d = %v, want errFileChanged", alg, 5*mib, size, err)
			}
		}
	}
}

func TestVerifyFileAlgorithms(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	content := writeSparse(t, good, 9*mib, []region{{mib, []byte("one")}, {5 * mib, []byte("two")}})
	bad := filepath.Join(dir, "bad")
	writeSparse(t, bad, 9*mib, []region{{mib, []byte("one")}, {5 * mib, []byte("twO")}})
	legacy := FileInfo{Name: "f", Size: 9 * mib, SHA256: sum(content)}
	chunked := FileInfo{Name: "f", Size: 9 * mib, Algorithm: AlgorithmSHA256Chunked4M, SHA256: chunkedSum(content)}
	withAlg := func(fi FileInfo, alg string) FileInfo { fi.Algorithm = alg; return fi }
	for _, tc := range []struct {
		desc     string
		path     string
		fi       FileInfo
		checksum bool
		ok       bool
		msg      string
	}{
		{"legacy", good, legacy, true, true, ""},
		{"legacy corrupted", bad, legacy, true, false, "sha256"},
		{"chunked", good, chunked, true, true, ""},
		{"chunked corrupted", bad, chunked, true, false, AlgorithmSHA256Chunked4M},
		{"legacy digest said to be chunked", good, withAlg(legacy, AlgorithmSHA256Chunked4M), true, false, "meta.json says"},
		{"chunked digest said to be legacy", good, withAlg(chunked, ""), true, false, "meta.json says"},
		{"unknown algorithm", good, withAlg(chunked, "blake3"), true, false, `unknown checksum algorithm "blake3"`},
		{"unknown algorithm size only", good, withAlg(chunked, "blake3"), false, true, ""},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			err := VerifyFileContext(context.Background(), tc.path, tc.fi, tc.checksum)
			if tc.ok != (err == nil) {
				t.Fatalf("VerifyFile = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && (!errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), tc.msg)) {
				t.Fatalf("VerifyFile = %v, want FailedPrecondition mentioning %q", err, tc.msg)
			}
		})
	}
}

// errAfter is a context whose Err is nil for the first limit calls and
// context.Canceled after: it ends in the middle of a checksum.
type errAfter struct {
	context.Context
	calls atomic.Int64
	limit int64
}

func (c *errAfter) Err() error {
	if c.calls.Add(1) > c.limit {
		return context.Canceled
	}
	return nil
}

func TestVerifyCanceledMidway(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	path := filepath.Join(t.TempDir(), "f")
	// 12 chunks holding data, so that every one of them is read.
	var regions []region
	for i := range int64(12) {
		regions = append(regions, region{i*chunkSize + 1000, []byte{byte(i + 1)}})
	}
	content := writeSparse(t, path, 12*chunkSize, regions)
	for _, fi := range []FileInfo{
		{Size: int64(len(content)), SHA256: sum(content)},
		{Size: int64(len(content)), Algorithm: AlgorithmSHA256Chunked4M, SHA256: chunkedSum(content)},
	} {
		t.Run(algorithmName(fi.Algorithm), func(t *testing.T) {
			ctx := &errAfter{Context: context.Background(), limit: 3}
			err := VerifyFileContext(ctx, path, fi, true)
			if !errors.Is(err, context.Canceled) || errors.Is(err, errdefs.ErrFailedPrecondition) {
				t.Fatalf("VerifyFileContext canceled midway = %v, want context.Canceled", err)
			}
			if n := ctx.calls.Load(); n <= ctx.limit || n > ctx.limit+maxHashWorkers {
				t.Fatalf("ctx checked %d times, want the checksum to stop soon after call %d", n, ctx.limit)
			}
			goleak.VerifyNone(t, goleak.IgnoreCurrent())
			if err := VerifyFileContext(context.Background(), path, fi, true); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestCommitChunkedAndLegacyMeta(t *testing.T) {
	root := filepath.Join(t.TempDir(), "snapshots")
	c, _ := openCatalog(t, root)
	sb := idGen.New()
	p, err := c.Begin(sb, "sparse")
	if err != nil {
		t.Fatal(err)
	}
	files := content{
		VMStateName: writeSparse(t, p.VMStatePath, 3000, []region{{0, []byte("vmstate")}}),
		MemName:     writeSparse(t, p.MemPath, 16*mib, []region{{0, []byte("boot")}, {9 * mib, []byte("heap")}}),
		DiskName:    writeSparse(t, p.DiskPath, 9*mib+5, []region{{1024, []byte("superblock")}}),
	}
	m, err := c.Commit(p, testMeta())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(m.Dir, MetaName))
	if err != nil {
		t.Fatal(err)
	}
	var onDisk Meta
	if err := json.Unmarshal(raw, &onDisk); err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		want := FileInfo{Name: name, Size: int64(len(b)), Algorithm: AlgorithmSHA256Chunked4M, SHA256: chunkedSum(b)}
		if fi := onDisk.Files[name]; fi != want {
			t.Errorf("meta.json file %s = %+v, want %+v", name, fi, want)
		}
		if err := VerifyFile(filepath.Join(m.Dir, name), onDisk.Files[name], true); err != nil {
			t.Error(err)
		}
	}

	// A snapshot committed by an older version: no algorithm, whole-file
	// SHA-256.
	legacy := m
	legacy.ID, legacy.Name, legacy.Dir = idGen.New(), "legacy", ""
	legacy.Files = map[string]FileInfo{}
	for name, b := range files {
		legacy.Files[name] = FileInfo{Name: name, Size: int64(len(b)), SHA256: sum(b)}
	}
	dir := writeSnapshotDir(t, root, sb, legacy.ID, legacy, files)
	if raw, _ := os.ReadFile(filepath.Join(dir, MetaName)); strings.Contains(string(raw), "algorithm") {
		t.Fatalf("legacy meta.json names an algorithm: %s", raw)
	}
	c2, logs := openCatalog(t, root)
	got, err := c2.Get(legacy.ID)
	if err != nil {
		t.Fatalf("Open ignored the legacy snapshot: %v\n%s", err, logs)
	}
	if again, err := c2.Get(m.ID); err != nil || !reflect.DeepEqual(again, m) {
		t.Fatalf("reopened snapshot = %+v, %v, want %+v", again, err, m)
	}
	for name, fi := range got.Files {
		if fi.Algorithm != AlgorithmSHA256 {
			t.Errorf("legacy file %s has algorithm %q", name, fi.Algorithm)
		}
		if err := VerifyFile(filepath.Join(got.Dir, name), fi, true); err != nil {
			t.Error(err)
		}
	}
	patch(t, filepath.Join(got.Dir, MemName), 12*mib, []byte("x"))
	if err := VerifyFile(filepath.Join(got.Dir, MemName), got.Files[MemName], true); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("VerifyFile of a corrupted legacy file = %v, want FailedPrecondition", err)
	}
}

// benchFile creates a file of size bytes holding data bytes of random data
// in 1 MiB pieces spread evenly, each inside one 4 MiB chunk (size when
// data equals size: a dense file).
func benchFile(b *testing.B, size, data int64) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "f")
	rng := rand.NewChaCha8([32]byte{1})
	piece := make([]byte, mib)
	var regions []region
	step := size / (data / mib)
	for off := int64(0); off+mib <= size && int64(len(regions))*mib < data; off += step {
		rng.Read(piece)
		regions = append(regions, region{off + min(step-mib, mib), append([]byte(nil), piece...)})
	}
	writeSparse(b, path, size, regions)
	return path
}

func benchChecksum(b *testing.B, path string) {
	for _, alg := range []string{AlgorithmSHA256, AlgorithmSHA256Chunked4M} {
		b.Run(algorithmName(alg), func(b *testing.B) {
			f, st, err := openRegular(path)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			b.SetBytes(st.Size())
			for b.Loop() {
				if _, err := checksum(context.Background(), f, st.Size(), alg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkChecksumSparse hashes a 1 GiB file holding 64 MiB of data, as a
// memory snapshot of a mostly idle guest.
func BenchmarkChecksumSparse(b *testing.B) {
	benchChecksum(b, benchFile(b, 1<<30, 64*mib))
}

// BenchmarkChecksumDense hashes a 256 MiB file without holes.
func BenchmarkChecksumDense(b *testing.B) {
	benchChecksum(b, benchFile(b, 256*mib, 256*mib))
}
