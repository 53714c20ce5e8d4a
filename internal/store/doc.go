// Package store is the daemon's durable state: an embedded bbolt database
// (data_dir/state.db) holding sandbox records (with their TTL deadlines,
// network identity and VMM process) and a bounded, sequenced event
// history. It holds nothing another component owns: address leases are
// re-derived from the sandbox records at start (the network manager
// reserves each recorded address again), and snapshot facts live only in
// the snapshot catalog (data_dir/snapshots, one meta.json per snapshot).
// Every write is committed and fsync'd before the call returns, so a
// change is on disk before the RPC that made it answers; writes that queue
// while another commits share the next transaction (group commit).
//
// The record types here (SandboxRecord, EventRecord) belong to the store:
// they are plain structs with explicit JSON tags, separate from the proto
// and domain types, and the sandbox manager converts. The package
// imports errdefs, bbolt and the standard library; it knows nothing of gRPC.
//
// # Schema
//
// The bucket tree (keys in <>, values after the colon):
//
//	v1                                   // schema bucket (schemaBucket)
//	├── version : uint64 big-endian      // schema version inside v1 (schemaVersion)
//	├── event_seq : uint64 big-endian    // last event sequence ever assigned
//	├── events_trimmed : uint64 big-endian // optional: highest event seq trimmed so far
//	├── event_count : uint64 big-endian  // optional: events in the history (counted when absent)
//	├── clean_end : 0x01                 // optional: the last run ended cleanly (EndRun;
//	│                                    // BeginRun deletes it); absent in an older store
//	│                                    // means "not clean", which needs no migration
//	├── sandboxes
//	│   └── <sandbox id> : SandboxRecord (JSON)
//	└── events
//	    └── <seq, uint64 big-endian> : EventRecord (JSON)
//	                                     // increasing (gaps where events were lost or the
//	                                     // sequence advanced), trimmed to the last
//	                                     // Options.EventHistory events
//
// Open refuses a database whose version is newer than schemaVersion, or that
// holds a top-level bucket other than v1 (a schema this binary does not
// know), and runs the migrations list to bring an older one up to date
// inside one transaction:
//
//   - version 2 added a snapshots bucket (snapshot records);
//   - version 3 deletes the leases bucket (written, never read) and the
//     snapshots bucket (a copy of the catalog's meta.json files), and
//     rewrites sandbox records without the process keys instance_id,
//     jail_id, jail_dir and cgroups. Decoding ignores unknown keys, so a
//     record that still carried them would read the same. A sandbox
//     record that is not a JSON object fails the migration (ErrCorrupt),
//     and the file is left at its old version.
//
// A daemon older than version 3 refuses a migrated file (newer schema).
//
// On every schema change: update the drawing above, add a migration to
// migrations() and bump schemaVersion.
//
// # Files and locks
//
// Open never wipes, truncates or recreates an existing file: a file that
// cannot be opened, fails bbolt's consistency check or has an unknown
// schema is an error naming the file, and the file is left as it was. Lock
// takes an exclusive flock on data_dir/vmm.lock for the daemon's life, so a
// second daemon on the same data directory refuses to start.
package store
