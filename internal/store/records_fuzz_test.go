package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
)

// FuzzDecodeRecord feeds arbitrary stored values to decode, as a corrupt
// or hostile state file would: a value that does not decode is ErrCorrupt
// (never a panic), and one that does survives a write and a read again.
func FuzzDecodeRecord(f *testing.F) {
	for _, s := range []string{
		`{"id":"01h2k3m4n5p6","state":"ready","labels":{"a":"b"},"hardware":{"vcpus":2,"memory_mib":512}}`,
		`{"seq":7,"sandbox_id":"01h2k3m4n5p6","action":"created","state":"starting","time":"2026-01-02T03:04:05Z","attributes":{"k":"v"}}`,
		`{}`, `null`, `[]`, `"x"`, `{"seq":-1}`, `{"time":"yesterday"}`, `{"labels":[1]}`, `{`, ``, "\xff",
		`{"id":"a","id":"b"}`, `{"attributes":{"k":null}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		check := func(name string, v, again any) {
			if err := decode(data, v); err != nil {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("%s: decode error %v is not ErrCorrupt", name, err)
				}
				return
			}
			b1, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("%s: decoded record does not encode: %v", name, err)
			}
			if err := decode(b1, again); err != nil {
				t.Fatalf("%s: re-decode of %s: %v", name, b1, err)
			}
			b2, err := json.Marshal(again)
			if err != nil || !bytes.Equal(b1, b2) {
				t.Fatalf("%s: round trip changed the record:\n%s\n%s (%v)", name, b1, b2, err)
			}
		}
		check("sandbox", &SandboxRecord{}, &SandboxRecord{})
		check("event", &EventRecord{}, &EventRecord{})
	})
}
