package sandbox

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// fakeNetArg is the ip= argument fakeNetworker attaches.
const fakeNetArg = "ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off"

// TestBootArgsWithNetwork creates networked sandboxes: the command line
// Firecracker gets (user args and the network's ip=) must fit the limit
// with what Firecracker appends, else the create is refused with
// InvalidArgument before anything is kept (no sandbox, no directory, no
// lease); an ip= goes before a "--", never among init's arguments.
func TestBootArgsWithNetwork(t *testing.T) {
	// The longest boot args that still fit with the ip= argument.
	fit := MaxBootArgsLen - firecrackerCmdlineReserve - len(fakeNetArg) - 1
	tests := []struct {
		name     string
		bootArgs string
		want     string // the spec's command line; "" when refused
	}{
		{"default", "", DefaultBootArgs + " " + fakeNetArg},
		{"longest that fits", strings.Repeat("a", fit), strings.Repeat("a", fit) + " " + fakeNetArg},
		{"one byte over with ip=", strings.Repeat("a", fit+1), ""},
		{"fits alone, not with ip=", strings.Repeat("a", 2000), ""},
		{"init args", "console=ttyS0 -- init-arg ip=x", "console=ttyS0 " + fakeNetArg + " -- init-arg ip=x"},
		{"init args first", "-- a b", fakeNetArg + " -- a b"},
		{"quoted --", `x="a -- b" y`, `x="a -- b" y ` + fakeNetArg},
		{"quoted -- word", `a "--" b`, `a ` + fakeNetArg + ` "--" b`},
		{"-- inside a word", "a --b c--", "a --b c-- " + fakeNetArg},
		{"unbalanced quote", `console=ttyS0 x="a`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &fakeRuntime{}
			nw := &fakeNetworker{}
			e := newTestEnv(t, t.TempDir(), rt, func(c *Config) { c.Network = nw })
			s, err := e.m.Create(t.Context(), CreateRequest{BootArgs: tt.bootArgs})
			if tt.want == "" {
				if !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("create: %v, want InvalidArgument", err)
				}
				if len(err.Error()) > 1024 {
					t.Errorf("error of %d bytes", len(err.Error()))
				}
				list, _ := e.m.List(t.Context(), ListFilter{})
				if len(list) != 0 || nw.count() != 0 || len(e.sandboxDirs(t)) != 0 || len(rt.specs) != 0 {
					t.Errorf("a refused create left sandboxes %v, %d leases, dirs %v, %d boots",
						list, nw.count(), e.sandboxDirs(t), len(rt.specs))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			e.waitState(t, s.ID, StateReady, 5*time.Second)
			if got := rt.specs[0].BootArgs; got != tt.want {
				t.Errorf("command line %q, want %q", got, tt.want)
			}
			if got, _ := e.m.Get(t.Context(), s.ID); got.Hardware.BootArgs != tt.want {
				t.Errorf("recorded %q, want %q", got.Hardware.BootArgs, tt.want)
			}
		})
	}
}

// TestBootArgsWithoutNetwork checks the limit with only what Firecracker
// appends, and that the args are passed on unchanged.
func TestBootArgsWithoutNetwork(t *testing.T) {
	fit := MaxBootArgsLen - firecrackerCmdlineReserve
	tests := []struct {
		name     string
		bootArgs string
		ok       bool
	}{
		{"longest that fits", strings.Repeat("a", fit), true},
		{"one over", strings.Repeat("a", fit+1), false},
		{"the limit itself", strings.Repeat("a", MaxBootArgsLen), false},
		{"init args", "console=ttyS0 -- x", true},
		{"balanced quotes", `a="b c" d`, true},
		{"unbalanced quote", `a="b c d`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &fakeRuntime{}
			e := newTestEnv(t, t.TempDir(), rt, nil)
			s, err := e.m.Create(t.Context(), CreateRequest{BootArgs: tt.bootArgs})
			if !tt.ok {
				if !errors.Is(err, errdefs.ErrInvalidArgument) || len(e.sandboxDirs(t)) != 0 {
					t.Fatalf("create: %v (dirs %v), want InvalidArgument and nothing left", err, e.sandboxDirs(t))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			e.waitState(t, s.ID, StateReady, 5*time.Second)
			if got := rt.specs[0].BootArgs; got != tt.bootArgs {
				t.Errorf("command line %q, want %q", got, tt.bootArgs)
			}
		})
	}
}
