package sandbox

import "slices"

// transitions is the state machine of the seed, as a table: the states a
// sandbox may move to from each state. Stopped and failed are final;
// removal is not a state (the sandbox leaves the registry).
//
//   - starting → ready (boot succeeded), failed (boot failed), stopping
//     (stop or forced removal during the boot);
//   - ready ⇄ running (a workload starts and ends);
//   - ready, running → stopping (stop), stopped (the VMM exited 0 on its
//     own), failed (the VMM crashed);
//   - stopping → stopped.
var transitions = map[State][]State{
	StateStarting: {StateReady, StateFailed, StateStopping},
	StateReady:    {StateRunning, StateStopping, StateStopped, StateFailed},
	StateRunning:  {StateReady, StateStopping, StateStopped, StateFailed},
	StateStopping: {StateStopped},
	StateStopped:  nil,
	StateFailed:   nil,
}

// allowed reports whether the state machine allows from → to.
func allowed(from, to State) bool {
	return slices.Contains(transitions[from], to)
}

// Valid reports whether s is one of the states.
func (s State) Valid() bool {
	_, ok := transitions[s]
	return ok
}

// Final reports whether s is a final state (stopped or failed): no VMM
// runs and only Remove applies.
func (s State) Final() bool { return s == StateStopped || s == StateFailed }
