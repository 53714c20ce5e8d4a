package sandbox

import "testing"

func TestTransitionTable(t *testing.T) {
	// Every allowed move of the seed's state machine (plus stop during
	// boot and VMM exits); everything else is refused.
	want := map[[2]State]bool{
		{StateStarting, StateReady}:    true, // boot success
		{StateStarting, StateFailed}:   true, // boot failure
		{StateStarting, StateStopping}: true, // stop / forced remove during boot
		{StateReady, StateRunning}:     true, // run()
		{StateRunning, StateReady}:     true, // workload exits
		{StateReady, StateStopping}:    true, // stop()
		{StateRunning, StateStopping}:  true,
		{StateReady, StateStopped}:     true, // VMM exited 0 on its own
		{StateRunning, StateStopped}:   true,
		{StateReady, StateFailed}:      true, // VMM crashed
		{StateRunning, StateFailed}:    true,
		{StateStopping, StateStopped}:  true,
	}
	for _, from := range States {
		for _, to := range States {
			if got := allowed(from, to); got != want[[2]State{from, to}] {
				t.Errorf("allowed(%s, %s) = %v, want %v", from, to, got, !got)
			}
		}
		if allowed(from, "bogus") || allowed("bogus", from) {
			t.Errorf("unknown state allowed with %s", from)
		}
	}
}

func TestStatePredicates(t *testing.T) {
	tests := []struct {
		s            State
		valid, final bool
	}{
		{StateStarting, true, false},
		{StateReady, true, false},
		{StateRunning, true, false},
		{StateStopping, true, false},
		{StateStopped, true, true},
		{StateFailed, true, true},
		{"", false, false},
		{"READY", false, false},
	}
	for _, tt := range tests {
		if tt.s.Valid() != tt.valid || tt.s.Final() != tt.final {
			t.Errorf("%q: valid %v final %v", tt.s, tt.s.Valid(), tt.s.Final())
		}
	}
}
