package cli

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
)

// stateNames lists the lower-case state names in lifecycle order.
var stateNames = []string{"starting", "ready", "running", "stopping", "stopped", "failed"}

// stateName returns the lower-case name of a state ("unknown" for
// UNSPECIFIED or a value this CLI does not know).
func stateName(s sandboxv1.SandboxState) string {
	switch s {
	case sandboxv1.SandboxState_SANDBOX_STATE_STARTING:
		return "starting"
	case sandboxv1.SandboxState_SANDBOX_STATE_READY:
		return "ready"
	case sandboxv1.SandboxState_SANDBOX_STATE_RUNNING:
		return "running"
	case sandboxv1.SandboxState_SANDBOX_STATE_STOPPING:
		return "stopping"
	case sandboxv1.SandboxState_SANDBOX_STATE_STOPPED:
		return "stopped"
	case sandboxv1.SandboxState_SANDBOX_STATE_FAILED:
		return "failed"
	}
	return "unknown"
}

// parseStates turns --state values (repeatable, comma-separated allowed)
// into API states, rejecting unknown names with the valid ones listed.
func parseStates(values []string) ([]sandboxv1.SandboxState, error) {
	var out []sandboxv1.SandboxState
	for _, v := range values {
		for _, name := range strings.Split(v, ",") {
			name = strings.ToLower(strings.TrimSpace(name))
			i := slices.Index(stateNames, name)
			if i < 0 {
				return nil, usagef("invalid --state %q: valid states are %s", name, strings.Join(stateNames, ", "))
			}
			s := sandboxv1.SandboxState(i + 1)
			if !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
	}
	return out, nil
}

// parseLabels turns k=v flags into a map. Only the '=' is checked here; the
// daemon validates keys and values.
func parseLabels(values []string) (map[string]string, error) {
	if len(values) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(values))
	for _, v := range values {
		k, val, ok := strings.Cut(v, "=")
		if !ok {
			return nil, usagef("invalid --label %q: want key=value", v)
		}
		out[k] = val
	}
	return out, nil
}

// splitList splits repeatable, comma-separated flag values.
func splitList(values []string) []string {
	var out []string
	for _, v := range values {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

// outputFormat is the -o flag: table or json.
type outputFormat string

const (
	formatTable outputFormat = "table"
	formatJSON  outputFormat = "json"
)

// String implements pflag.Value.
func (f *outputFormat) String() string { return string(*f) }

// Set implements pflag.Value.
func (f *outputFormat) Set(s string) error {
	switch outputFormat(s) {
	case formatTable, formatJSON:
		*f = outputFormat(s)
		return nil
	}
	return fmt.Errorf("want table or json")
}

// Type implements pflag.Value.
func (f *outputFormat) Type() string { return "format" }

// durationValue is a flag that takes a Go duration ("90s", "2m") or a bare
// number of seconds ("90").
type durationValue struct{ d time.Duration }

// String implements pflag.Value.
func (v *durationValue) String() string { return v.d.String() }

// Set implements pflag.Value.
func (v *durationValue) Set(s string) error {
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		if n < 0 {
			return fmt.Errorf("must not be negative")
		}
		v.d = time.Duration(n * float64(time.Second))
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration such as 90s or 2m, or a number of seconds")
	}
	if d < 0 {
		return fmt.Errorf("must not be negative")
	}
	v.d = d
	return nil
}

// Type implements pflag.Value.
func (v *durationValue) Type() string { return "duration" }

// secondsValue is a flag that takes a whole, non-negative number of
// seconds.
type secondsValue struct{ n uint64 }

// String implements pflag.Value.
func (v *secondsValue) String() string { return strconv.FormatUint(v.n, 10) }

// Set implements pflag.Value.
func (v *secondsValue) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return fmt.Errorf("want a whole number of seconds")
	}
	v.n = n
	return nil
}

// Type implements pflag.Value.
func (v *secondsValue) Type() string { return "seconds" }

// duration returns the value as a duration.
func (v *secondsValue) duration() time.Duration { return time.Duration(v.n) * time.Second }
