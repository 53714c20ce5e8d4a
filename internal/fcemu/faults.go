package fcemu

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// Fault kinds accepted in FCEMU_FAULTS.
const (
	faultFail          = "fail"
	faultExit          = "exit"
	faultHang          = "hang"
	faultExitAfter     = "exit-after"
	faultExitAfterBoot = "exit-after-boot"
)

// faultRule is one parsed FCEMU_FAULTS rule.
type faultRule struct {
	kind    string
	method  string
	path    string
	prefix  bool
	disc    string
	nth     int // 0: every matching call
	message string
	code    int
	ms      int
	seen    int // matching calls so far (guarded by faults.mu)
}

// faults holds the rules of FCEMU_FAULTS and counts matching calls.
type faults struct {
	// mu guards the rules' counters.
	mu    sync.Mutex
	rules []*faultRule
}

// parseFaults parses the FCEMU_FAULTS grammar documented in doc.go.
func parseFaults(spec string) (*faults, error) {
	f := &faults{}
	for _, raw := range strings.Split(spec, ";") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		r, err := parseFaultRule(raw)
		if err != nil {
			return nil, fmt.Errorf("FCEMU_FAULTS rule %q: %w", raw, err)
		}
		f.rules = append(f.rules, r)
	}
	return f, nil
}

func parseFaultRule(raw string) (*faultRule, error) {
	kind, rest, ok := strings.Cut(raw, " ")
	if !ok {
		return nil, fmt.Errorf("missing argument")
	}
	rest = strings.TrimSpace(rest)
	r := &faultRule{kind: kind, code: 1, message: "injected fault"}
	switch kind {
	case faultExitAfter, faultExitAfterBoot:
		msStr, codeStr, hasCode := strings.Cut(rest, "=")
		ms, err := strconv.Atoi(strings.TrimSpace(msStr))
		if err != nil || ms < 0 {
			return nil, fmt.Errorf("bad delay %q", msStr)
		}
		r.ms = ms
		if hasCode {
			if r.code, err = parseCode(codeStr); err != nil {
				return nil, err
			}
		}
		return r, nil
	case faultFail, faultExit, faultHang:
	default:
		return nil, fmt.Errorf("unknown fault kind %q", kind)
	}
	call, arg, hasArg := strings.Cut(rest, "=")
	switch {
	case hasArg && kind == faultHang:
		return nil, fmt.Errorf("hang takes no argument")
	case hasArg && kind == faultFail:
		r.message = arg
	case hasArg && kind == faultExit:
		var err error
		if r.code, err = parseCode(arg); err != nil {
			return nil, err
		}
	}
	fields := strings.Fields(call)
	if len(fields) != 2 {
		return nil, fmt.Errorf("call must be \"METHOD /path\"")
	}
	switch fields[0] {
	case "GET", "PUT", "PATCH", "DELETE":
		r.method = fields[0]
	default:
		return nil, fmt.Errorf("unsupported method %q", fields[0])
	}
	target := fields[1]
	if i := strings.LastIndexByte(target, '@'); i >= 0 {
		n, err := strconv.Atoi(target[i+1:])
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad call index %q", target[i+1:])
		}
		r.nth = n
		target = target[:i]
	}
	if i := strings.IndexByte(target, '#'); i >= 0 {
		r.disc = target[i+1:]
		target = target[:i]
		if r.disc == "" {
			return nil, fmt.Errorf("empty discriminator")
		}
	}
	if !strings.HasPrefix(target, "/") {
		return nil, fmt.Errorf("path %q must start with /", target)
	}
	if strings.HasSuffix(target, "*") {
		r.prefix = true
		target = strings.TrimSuffix(target, "*")
	}
	r.path = target
	return r, nil
}

func parseCode(s string) (int, error) {
	c, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || c < 0 || c > 255 {
		return 0, fmt.Errorf("bad exit code %q", s)
	}
	return c, nil
}

// match returns the first call rule triggered by this call, counting the
// call against every rule it matches.
func (f *faults) match(method, path, disc string) *faultRule {
	f.mu.Lock()
	defer f.mu.Unlock()
	var hit *faultRule
	for _, r := range f.rules {
		if r.method == "" || r.method != method {
			continue
		}
		if r.prefix && !strings.HasPrefix(path, r.path) || !r.prefix && path != r.path {
			continue
		}
		if r.disc != "" && r.disc != disc {
			continue
		}
		r.seen++
		if hit == nil && (r.nth == 0 || r.nth == r.seen) {
			hit = r
		}
	}
	return hit
}

// timed returns the exit-after rules of the given kind.
func (f *faults) timed(kind string) []*faultRule {
	var out []*faultRule
	for _, r := range f.rules {
		if r.kind == kind {
			out = append(out, r)
		}
	}
	return out
}
