package snapshot

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// validNameRE is ValidName's rule written independently.
var validNameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$`)

// FuzzValidName checks ValidName against its definition: an accepted name
// is a single path element; a rejected one is ErrInvalidArgument.
func FuzzValidName(f *testing.F) {
	for _, s := range []string{"nightly", "v1.2_rc-3", "a", strings.Repeat("x", 64), strings.Repeat("x", 65), "", ".", "..",
		".hidden", "-rf", "a/b", "../../etc", "a\x00b", "naïve", "a b", "_ok"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := ValidName(name)
		want := validNameRE.MatchString(name)
		if (err == nil) != want {
			t.Fatalf("ValidName(%q) = %v, want valid %v", name, err, want)
		}
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ValidName(%q): %v is not InvalidArgument", name, err)
			}
			return
		}
		if filepath.Base(name) != name || !filepath.IsLocal(name) || name == "." || name == ".." {
			t.Fatalf("accepted %q is not a single local path element", name)
		}
	})
}

// fuzzSizes are the sizes of the data files next to the fuzzed meta.json.
var fuzzSizes = map[string]int64{VMStateName: 3, MemName: 5, DiskName: 7}

// validMetaJSON is a meta.json that loadSnapshot accepts for the files of
// fuzzSizes.
func validMetaJSON(f *testing.F) []byte {
	m := Meta{ID: "01h2k3m4n5p7", Name: "nightly", SandboxID: "01h2k3m4n5p6", Type: TypeFull,
		FirecrackerVersion: "1.10.1", SnapshotVersion: "4.0.0", Files: map[string]FileInfo{}}
	for name, size := range fuzzSizes {
		m.Files[name] = FileInfo{Name: name, Size: size, Algorithm: AlgorithmSHA256Chunked4M, SHA256: strings.Repeat("ab", 32)}
	}
	b, err := json.Marshal(m)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// FuzzLoadSnapshot feeds arbitrary meta.json contents to loadSnapshot, as
// a tampered snapshot directory would: it never panics, an accepted meta
// satisfies every rule loadSnapshot promises, and writing it back gives
// the same meta.
func FuzzLoadSnapshot(f *testing.F) {
	valid := validMetaJSON(f)
	f.Add(valid)
	// The seeds are what they claim: the valid one loads, each mutation
	// of it is refused.
	seedDir := f.TempDir()
	load := func(data []byte) error {
		for name, size := range fuzzSizes {
			if err := os.WriteFile(filepath.Join(seedDir, name), make([]byte, size), 0o600); err != nil {
				f.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(seedDir, MetaName), data, 0o600); err != nil {
			f.Fatal(err)
		}
		_, err := loadSnapshot("01h2k3m4n5p6", "01h2k3m4n5p7", seedDir)
		return err
	}
	if err := load(valid); err != nil {
		f.Fatalf("valid seed refused: %v", err)
	}
	for _, mut := range [][2]string{
		{`"type":"full"`, `"type":"weird"`},
		{`"name":"nightly"`, `"name":"../x"`},
		{`"id":"01h2k3m4n5p7"`, `"id":"01h2k3m4n5p8"`},
		{`"sandbox_id":"01h2k3m4n5p6"`, `"sandbox_id":"x"`},
		{`"name":"mem"`, `"name":"../../etc/passwd"`},
		{`"size":5`, `"size":6`},
		{`"algorithm":"sha256-chunked-4m"`, `"algorithm":"md5"`},
		{`"files":{`, `"parent_id":"nope","files":{`},
	} {
		bad := []byte(strings.Replace(string(valid), mut[0], mut[1], 1))
		if err := load(bad); err == nil {
			f.Fatalf("seed %s -> %s accepted", mut[0], mut[1])
		}
		f.Add(bad)
	}
	for _, s := range []string{"", "{", "null", "[]", `{"files":null}`, "\xff\xfe"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const sandboxID, id = "01h2k3m4n5p6", "01h2k3m4n5p7"
		dir := t.TempDir()
		for name, size := range fuzzSizes {
			if err := os.WriteFile(filepath.Join(dir, name), make([]byte, size), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		write := func(b []byte) {
			if err := os.WriteFile(filepath.Join(dir, MetaName), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		write(data)
		m, err := loadSnapshot(sandboxID, id, dir)
		if err != nil {
			return
		}
		switch {
		case m.ID != id || m.SandboxID != sandboxID || m.Dir != dir:
			t.Fatalf("accepted meta for %q/%q in %s: %+v", sandboxID, id, dir, m)
		case m.Type != TypeFull && m.Type != TypeDiff:
			t.Fatalf("accepted type %q", m.Type)
		case ValidName(m.Name) != nil:
			t.Fatalf("accepted name %q", m.Name)
		}
		for key, fi := range m.Files {
			if key != fi.Name || ValidName(key) != nil || key == MetaName || fi.Size != fuzzSizes[key] {
				t.Fatalf("accepted file entry %q: %+v", key, fi)
			}
		}
		for name := range fuzzSizes {
			if _, ok := m.Files[name]; !ok {
				t.Fatalf("accepted a meta without %s", name)
			}
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		write(b)
		again, err := loadSnapshot(sandboxID, id, dir)
		if err != nil {
			t.Fatalf("the accepted meta written back is refused: %v\n%s", err, b)
		}
		if !again.CreatedAt.Equal(m.CreatedAt) {
			t.Fatalf("created_at %v became %v", m.CreatedAt, again.CreatedAt)
		}
		again.CreatedAt = m.CreatedAt
		if !reflect.DeepEqual(m, again) {
			t.Fatalf("round trip changed the meta:\n%+v\n%+v", m, again)
		}
	})
}
