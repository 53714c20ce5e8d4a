package vmm

import "github.com/firecracker-vmm/firecracker-vmm/internal/firecracker"

// InstanceState is the state of a microVM as its VMM reports it (GET /).
type InstanceState = firecracker.InstanceState

// The instance states.
const (
	// StateNotStarted is a VMM's state before InstanceStart or a snapshot
	// load.
	StateNotStarted = firecracker.StateNotStarted
	// StateRunning is the state of a started or resumed microVM.
	StateRunning = firecracker.StateRunning
	// StatePaused is the state of a paused microVM (also right after a
	// snapshot load without resuming).
	StatePaused = firecracker.StatePaused
)

// InstanceInfo is what a VMM reports about itself (GET /).
type InstanceInfo struct {
	// ID is the instance id (--id).
	ID string
	// State is the microVM's current state.
	State InstanceState
	// VMMVersion is the Firecracker version.
	VMMVersion string
}
