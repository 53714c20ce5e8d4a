package store

import (
	"bytes"
	"encoding/json"
	"reflect"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// oldFile writes a database of an older schema version in dir: a current
// file (with the events given) rewritten through bbolt by shape, which
// recreates the buckets that version had, then version.
func oldFile(t *testing.T, dir string, version uint64, events int, shape func(root *bolt.Bucket) error) {
	t.Helper()
	s, err := Open(Path(dir), Options{})
	if err != nil {
		t.Fatal(err)
	}
	for range events {
		if _, err := s.AppendEvent(t.Context(), EventRecord{SandboxID: "sb-1", Action: "created"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(Path(dir), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		root := tx.Bucket([]byte(schemaBucket))
		if err := shape(root); err != nil {
			return err
		}
		return root.Put(keyVersion, u64(version))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// putRaw creates bucket name (unless it exists) and stores values in it.
func putRaw(root *bolt.Bucket, name string, values map[string][]byte) error {
	b, err := root.CreateBucketIfNotExists([]byte(name))
	if err != nil {
		return err
	}
	for k, v := range values {
		if err := b.Put([]byte(k), v); err != nil {
			return err
		}
	}
	return nil
}

// withProcessKeys returns rec as JSON with extra keys in its "process"
// object.
func withProcessKeys(t *testing.T, rec SandboxRecord, extra map[string]any) []byte {
	t.Helper()
	data, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	proc := m["process"].(map[string]any)
	for k, v := range extra {
		proc[k] = v
	}
	if data, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	return data
}

// deadKeys are what sandbox records of version 2 and older may carry in
// their process object.
func deadKeys(id string) map[string]any {
	return map[string]any{
		"instance_id": id, "jail_id": id, "jail_dir": "/srv/jailer/firecracker/" + id,
		"cgroups": []string{"/sys/fs/cgroup/cpu/firecracker/" + id, "/sys/fs/cgroup/memory/firecracker/" + id},
	}
}

// inspect returns the database's version, the buckets inside v1 and the
// raw sandbox records.
func inspect(t *testing.T, s *Store) (version uint64, bkts []string, raw map[string][]byte) {
	t.Helper()
	raw = map[string][]byte{}
	err := s.db.View(func(tx *bolt.Tx) error {
		root := tx.Bucket([]byte(schemaBucket))
		version = decodeU64(root.Get(keyVersion))
		if err := root.ForEachBucket(func(k []byte) error { bkts = append(bkts, string(k)); return nil }); err != nil {
			return err
		}
		return root.Bucket(bktSandboxes).ForEach(func(k, v []byte) error {
			raw[string(k)] = bytes.Clone(v)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return version, bkts, raw
}

// A version-2 database, with leases, snapshot records and sandbox records
// carrying the process fields version 3 dropped, is migrated in place: the
// leases and snapshots buckets are gone and the sandbox records read as
// before, without the dead keys.
func TestMigrateFromVersion2(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	full := fullRecord("sb-1")
	jailless := SandboxRecord{ID: "sb-2", State: "stopped", Process: ProcessRecord{APISocket: "/d/sb-2/fc.sock"},
		CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	clean := SandboxRecord{ID: "sb-3", State: "starting", Labels: map[string]string{"k": "v"}}
	cleanJSON, err := json.Marshal(clean)
	if err != nil {
		t.Fatal(err)
	}
	// Without a process object at all, as hand-written or very old
	// records may be.
	noProcess := []byte(`{"id":"sb-4","state":"failed","failure_reason":"boom"}`)
	oldFile(t, dir, 2, 3, func(root *bolt.Bucket) error {
		if err := putRaw(root, string(bktSandboxes), map[string][]byte{
			"sb-1": withProcessKeys(t, full, deadKeys("sb-1")),
			"sb-2": withProcessKeys(t, jailless, map[string]any{"instance_id": "sb-2"}),
			"sb-3": cleanJSON,
			"sb-4": noProcess,
		}); err != nil {
			return err
		}
		if err := putRaw(root, "leases", map[string][]byte{
			string([]byte{10, 0, 0, 2}): []byte(`{"ip":"10.0.0.2","sandbox_id":"sb-1"}`),
			string([]byte{10, 0, 0, 6}): []byte(`{"ip":"10.0.0.6","sandbox_id":"sb-gone"}`),
		}); err != nil {
			return err
		}
		return putRaw(root, "snapshots", map[string][]byte{
			"snap-a": []byte(`{"id":"snap-a","sandbox_id":"sb-1","name":"a","type":"Full","created_at":"2026-01-01T00:00:00Z","dir":"/d/snapshots/sb-1/snap-a","size_bytes":42}`),
		})
	})

	s := openStore(t, dir, Options{})
	version, bkts, raw := inspect(t, s)
	if version != 3 || schemaVersion != 3 {
		t.Fatalf("version %d after migration (schemaVersion %d), want 3", version, schemaVersion)
	}
	if want := []string{"events", "sandboxes"}; !slices.Equal(bkts, want) {
		t.Fatalf("buckets %q after migration, want %q", bkts, want)
	}
	got, err := s.ListSandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []SandboxRecord{full, jailless, clean, {ID: "sb-4", State: "failed", FailureReason: "boom"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("records after migration:\n%+v\nwant\n%+v", got, want)
	}
	for id, v := range raw {
		for k := range deadKeys(id) {
			if bytes.Contains(v, []byte(`"`+k+`"`)) {
				t.Errorf("record %s still carries %q: %s", id, k, v)
			}
		}
	}
	if !bytes.Equal(raw["sb-3"], cleanJSON) || !bytes.Equal(raw["sb-4"], noProcess) {
		t.Errorf("records without dead keys were rewritten: %s, %s", raw["sb-3"], raw["sb-4"])
	}
	if evs, ok, err := s.EventsSince(ctx, 0); err != nil || !ok || len(evs) != 3 {
		t.Errorf("events after migration: %d, %v, %v; want 3, ok", len(evs), ok, err)
	}
	// The migrated file opens again as it is.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir, Options{})
	if got2, err := s.ListSandboxes(ctx); err != nil || !reflect.DeepEqual(got2, want) {
		t.Fatalf("records after reopening: %+v, %v", got2, err)
	}
}

// A version-1 database (leases, no snapshots bucket) goes through both
// migrations.
func TestMigrateFromVersion1(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	rec := SandboxRecord{ID: "sb-old", State: "ready", Process: ProcessRecord{PID: 7, PIDStartTime: 9}}
	oldFile(t, dir, 1, 0, func(root *bolt.Bucket) error {
		if err := putRaw(root, string(bktSandboxes), map[string][]byte{"sb-old": withProcessKeys(t, rec, deadKeys("sb-old"))}); err != nil {
			return err
		}
		return putRaw(root, "leases", map[string][]byte{
			string([]byte{10, 0, 0, 2}): []byte(`{"ip":"10.0.0.2","sandbox_id":"sb-old"}`),
		})
	})
	s := openStore(t, dir, Options{})
	version, bkts, _ := inspect(t, s)
	if version != schemaVersion || !slices.Equal(bkts, []string{"events", "sandboxes"}) {
		t.Fatalf("after migration: version %d, buckets %q", version, bkts)
	}
	if got, err := s.GetSandbox(ctx, "sb-old"); err != nil || !reflect.DeepEqual(got, rec) {
		t.Fatalf("record after migration: %+v, %v", got, err)
	}
}

// A migration that meets a record it cannot read fails as a whole: Open
// reports the corruption and the file is left at its old version.
func TestMigrateCorruptRecord(t *testing.T) {
	tests := []struct {
		name string
		data string
	}{
		{"not json", "{not json"},
		{"process not an object", `{"id":"sb-bad","process":[1,2]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			oldFile(t, dir, 2, 0, func(root *bolt.Bucket) error {
				if err := putRaw(root, "leases", nil); err != nil {
					return err
				}
				if err := putRaw(root, "snapshots", nil); err != nil {
					return err
				}
				return putRaw(root, string(bktSandboxes), map[string][]byte{"sb-bad": []byte(tt.data)})
			})
			assertOpenFails(t, Path(dir), ErrCorrupt)
		})
	}
}

// A record that still carries the dropped keys (written by hand, or by an
// older daemon into a file that is then migrated) decodes without them.
func TestDroppedProcessKeysDecode(t *testing.T) {
	s := openStore(t, "", Options{})
	rec := fullRecord("sb-1")
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(schemaBucket)).Bucket(bktSandboxes).Put([]byte(rec.ID), withProcessKeys(t, rec, deadKeys(rec.ID)))
	}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetSandbox(t.Context(), rec.ID); err != nil || !reflect.DeepEqual(got, rec) {
		t.Fatalf("GetSandbox = %+v, %v; want %+v", got, err, rec)
	}
}
