package vmm

import (
	"reflect"
	"strings"
	"testing"
)

func TestArgs(t *testing.T) {
	inv := Invocation{ID: "vm-1", APISocket: "/run/vm-1.sock"}
	tests := []struct {
		name    string
		cfg     Config
		inv     Invocation
		want    []string
		wantErr string
	}{
		{"minimal", Config{Binary: "fc"}, inv, []string{"--api-sock", "/run/vm-1.sock", "--id", "vm-1"}, ""},
		{"everything", Config{Binary: "fc", LogLevel: "Debug", NoSeccomp: true, HTTPAPIMaxPayloadSize: 100000, MMDSSizeLimit: 4096, BootTimer: true},
			Invocation{ID: "vm-1", APISocket: "/s", LogPath: "/l", MetricsPath: "/m"},
			[]string{"--api-sock", "/s", "--id", "vm-1", "--level", "Debug", "--log-path", "/l", "--metrics-path", "/m",
				"--no-seccomp", "--http-api-max-payload-size", "100000", "--mmds-size-limit", "4096", "--boot-timer"}, ""},
		{"seccomp filter", Config{SeccompFilter: "/f.bpf"}, inv,
			[]string{"--api-sock", "/run/vm-1.sock", "--id", "vm-1", "--seccomp-filter", "/f.bpf"}, ""},
		{"invocation level overrides", Config{LogLevel: "Info"}, Invocation{ID: "a", APISocket: "/s", LogLevel: "warn", LogPath: "/l"},
			[]string{"--api-sock", "/s", "--id", "a", "--level", "warn", "--log-path", "/l"}, ""},
		{"log path without level", Config{}, Invocation{ID: "a", APISocket: "/s", LogPath: "/l"},
			[]string{"--api-sock", "/s", "--id", "a", "--log-path", "/l"}, ""},
		{"64 byte id", Config{}, Invocation{ID: strings.Repeat("a", 64), APISocket: "/s"},
			[]string{"--api-sock", "/s", "--id", strings.Repeat("a", 64)}, ""},
		{"empty id", Config{}, Invocation{APISocket: "/s"}, nil, "1-64 bytes"},
		{"65 byte id", Config{}, Invocation{ID: strings.Repeat("a", 65), APISocket: "/s"}, nil, "1-64 bytes"},
		{"underscore id", Config{}, Invocation{ID: "vm_1", APISocket: "/s"}, nil, "only letters"},
		{"dot id", Config{}, Invocation{ID: "vm.1", APISocket: "/s"}, nil, "only letters"},
		{"no socket", Config{}, Invocation{ID: "a"}, nil, "API socket"},
		{"seccomp conflict", Config{NoSeccomp: true, SeccompFilter: "/f"}, inv, nil, "mutually exclusive"},
		{"bad level", Config{LogLevel: "loud"}, inv, nil, "log level"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Args(tt.cfg, tt.inv)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
			for _, a := range got {
				if strings.HasPrefix(a, "--") && strings.Contains(a, "=") {
					t.Errorf("flag %q uses --flag=value", a)
				}
			}
		})
	}
}

func TestChildEnv(t *testing.T) {
	t.Setenv("PATH", "/p")
	t.Setenv("SECRET_OF_PARENT", "x")
	got := childEnv([]string{"FCEMU_SKIP_TAP=1"})
	want := []string{"PATH=/p", "FCEMU_SKIP_TAP=1"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("childEnv = %q, want %q", got, want)
	}
	if got := childEnv([]string{"PATH=/q"}); !reflect.DeepEqual(got, []string{"PATH=/q"}) {
		t.Errorf("childEnv override = %q", got)
	}
}
