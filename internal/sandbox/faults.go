package sandbox

import "slices"

// Crash points: the named steps of create, boot, stop, remove, checkpoint
// and restore at which Config.CrashPoint is called. A test that kills the
// daemon at each of them (vmm-daemon's VMM_CRASH_AT) proves that Recover
// finds a consistent state whichever step the daemon died after.
const (
	// CrashCreateDir: the sandbox directory exists; nothing is recorded.
	CrashCreateDir = "create.dir"
	// CrashCreateDisk: the disk copy (and, jailed, the chroot) exists.
	CrashCreateDisk = "create.disk"
	// CrashCreateNetwork: the sandbox's namespace and TAP exist.
	CrashCreateNetwork = "create.network"
	// CrashCreateRecorded: the starting record is stored; the
	// boot, started while they were written, may or may not be done.
	CrashCreateRecorded = "create.recorded"
	// CrashBootStarted: a booted VMM runs; its pid is not recorded yet,
	// nor perhaps the sandbox's record (the boot overlaps its fsync).
	CrashBootStarted = "boot.started"
	// CrashStopStopping: the stopping record is stored; the VMM runs.
	CrashStopStopping = "stop.stopping"
	// CrashStopExited: the VMM is gone; the stopped record is not stored.
	CrashStopExited = "stop.exited"
	// CrashRemoveMarked: the record says the removal began; nothing is
	// released yet.
	CrashRemoveMarked = "remove.marked"
	// CrashRemoveReleased: network, jail and directory are gone; the
	// record is not deleted yet.
	CrashRemoveReleased = "remove.released"
	// CrashCheckpointPaused: the VM is paused; nothing is written.
	CrashCheckpointPaused = "checkpoint.paused"
	// CrashCheckpointWritten: the snapshot files are written in the
	// catalog's temporary directory; the VM is still paused.
	CrashCheckpointWritten = "checkpoint.written"
	// CrashCheckpointResumed: the VM runs again; the snapshot is not
	// committed.
	CrashCheckpointResumed = "checkpoint.resumed"
	// CrashCheckpointCommitted: the snapshot is in the catalog; the
	// sandbox's record does not name it yet.
	CrashCheckpointCommitted = "checkpoint.committed"
	// CrashRestoreFiles: the restored sandbox's directory holds its disk
	// copy and snapshot files; nothing is recorded.
	CrashRestoreFiles = "restore.files"
	// CrashRestoreNetwork: the restored sandbox's namespace exists.
	CrashRestoreNetwork = "restore.network"
	// CrashRestoreRecorded: the starting record is stored; the restore
	// may or may not be done.
	CrashRestoreRecorded = "restore.recorded"
	// CrashRestoreStarted: the restored VMM runs; its pid is not recorded,
	// nor perhaps the sandbox's record.
	CrashRestoreStarted = "restore.started"
)

// CrashPoints lists every crash point, in the order of the steps.
var CrashPoints = []string{
	CrashCreateDir, CrashCreateDisk, CrashCreateNetwork, CrashCreateRecorded, CrashBootStarted,
	CrashStopStopping, CrashStopExited,
	CrashRemoveMarked, CrashRemoveReleased,
	CrashCheckpointPaused, CrashCheckpointWritten, CrashCheckpointResumed, CrashCheckpointCommitted,
	CrashRestoreFiles, CrashRestoreNetwork, CrashRestoreRecorded, CrashRestoreStarted,
}

// ValidCrashPoint reports whether name is one of CrashPoints.
func ValidCrashPoint(name string) bool { return slices.Contains(CrashPoints, name) }

// crash calls Config.CrashPoint, if set, with point.
func (m *Manager) crash(point string) {
	if m.cfg.CrashPoint != nil {
		m.cfg.CrashPoint(point)
	}
}
