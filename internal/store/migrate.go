package store

import (
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Buckets of older schema versions, which the migrations create or delete.
const (
	// oldLeases held address leases (versions 1 and 2). Recovery
	// re-derives leases from the sandbox records.
	oldLeases = "leases"
	// oldSnapshots mirrored the snapshot catalog's meta.json files
	// (version 2). The catalog is the one owner of snapshot facts.
	oldSnapshots = "snapshots"
)

// migration upgrades a database from version-1 to version inside the open
// transaction.
type migration struct {
	version int
	migrate func(tx *bolt.Tx) error
}

// migrations lists the upgrades, oldest first. Open runs those above the
// file's version, and sets the current version, in one transaction.
func migrations() []migration {
	return []migration{
		// 2: snapshot records.
		{version: 2, migrate: func(tx *bolt.Tx) error {
			_, err := tx.Bucket([]byte(schemaBucket)).CreateBucketIfNotExists([]byte(oldSnapshots))
			return err
		}},
		// 3: one owner per fact. The leases and snapshot records go, and
		// sandbox records lose their dead process fields.
		{version: 3, migrate: func(tx *bolt.Tx) error {
			root := tx.Bucket([]byte(schemaBucket))
			for _, name := range []string{oldLeases, oldSnapshots} {
				if root.Bucket([]byte(name)) == nil {
					continue
				}
				if err := root.DeleteBucket([]byte(name)); err != nil {
					return fmt.Errorf("delete bucket %s: %w", name, err)
				}
			}
			return dropDeadProcessKeys(root.Bucket(bktSandboxes))
		}},
	}
}

// dropDeadProcessKeys rewrites every sandbox record whose "process" object
// carries a key that version 3 dropped: instance_id and jail_id (always the
// sandbox's id), jail_dir and cgroups (never written). It works on the JSON objects, so every other
// key is kept as it was. A record that is not a JSON object is corrupt:
// the migration fails, and its transaction with it.
func dropDeadProcessKeys(b *bolt.Bucket) error {
	type rewrite struct{ k, v []byte }
	var rewrites []rewrite
	err := b.ForEach(func(k, v []byte) error {
		out, changed, err := withoutDeadProcessKeys(v)
		if err != nil {
			return fmt.Errorf("sandbox %q: %w", k, err)
		}
		if changed {
			rewrites = append(rewrites, rewrite{append([]byte(nil), k...), out})
		}
		return nil
	})
	if err != nil {
		return err
	}
	// bbolt forbids changing a bucket while iterating over it.
	for _, r := range rewrites {
		if err := b.Put(r.k, r.v); err != nil {
			return fmt.Errorf("sandbox %q: %w", r.k, err)
		}
	}
	return nil
}

// withoutDeadProcessKeys returns the record without the dropped process
// keys, and whether any was there.
func withoutDeadProcessKeys(data []byte) ([]byte, bool, error) {
	dead := []string{"instance_id", "jail_id", "jail_dir", "cgroups"}
	var rec map[string]json.RawMessage
	if err := decode(data, &rec); err != nil {
		return nil, false, err
	}
	raw, ok := rec["process"]
	if !ok {
		return data, false, nil
	}
	var proc map[string]json.RawMessage
	if err := decode(raw, &proc); err != nil {
		return nil, false, err
	}
	changed := false
	for _, k := range dead {
		if _, ok := proc[k]; ok {
			delete(proc, k)
			changed = true
		}
	}
	if !changed {
		return data, false, nil
	}
	var err error
	if rec["process"], err = json.Marshal(proc); err != nil {
		return nil, false, fmt.Errorf("encode: %w", err)
	}
	out, err := json.Marshal(rec)
	if err != nil {
		return nil, false, fmt.Errorf("encode: %w", err)
	}
	return out, true, nil
}
