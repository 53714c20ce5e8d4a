package daemon

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// FuzzLoad feeds arbitrary files to the config loader: it never panics;
// a refusal names the file (a *ConfigError listing each bad key, or the
// TOML parse error); an accepted config is valid and, written out as TOML
// and loaded again, is the same config.
func FuzzLoad(f *testing.F) {
	example, err := os.ReadFile("../../docs/config.example.toml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	for _, s := range []string{
		"",
		"[daemon]\nlog_level = \"debug\"\nmax_event_subscribers = 4\n",
		"[limits]\nmax_vcpus = 4\nallowed_dirs = [\"/srv/images\"]\n",
		"[network]\nenabled = false\n[firecracker.jailer]\nuid = 123\ngid = 123\nchroot_base_dir = \"/srv/jail\"\n",
		"[daemon]\nmax_event_subscribers = 0\n",
		"[daemon]\nlog_levl = \"x\"\n",
		"[nosuch]\nk = 1\n",
		"[limits]\nmax_vcpus = \"many\"\n",
		"[network]\ncidr = \"300.1.1.1/8\"\n",
		"[defaults]\nboot_args = \"a\\nb\"\n",
		"[grpc]\ntcp_addr = \"0.0.0.0:1\"\n",
		"[daemon\n",
		"\xff\xfe",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "config.toml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load(path, true, Overrides{})
		if err != nil {
			var ce *ConfigError
			if errors.As(err, &ce) && (ce.Path != path || len(ce.Problems) == 0) {
				t.Fatalf("config error %+v does not name the file and its problems", ce)
			}
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("refusal %q does not name the file", err)
			}
			return
		}
		if d := cfg.Daemon; d.MaxEventSubscribers < 1 || d.ShutdownTimeoutSecs < 1 || d.ShutdownTimeoutSecs > 3600 ||
			(d.OnShutdown != "leave" && d.OnShutdown != "stop") {
			t.Fatalf("accepted out-of-range [daemon] %+v", d)
		}
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(cfg); err != nil {
			t.Fatalf("accepted config does not encode: %v", err)
		}
		again := filepath.Join(dir, "again.toml")
		if err := os.WriteFile(again, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg2, err := Load(again, true, Overrides{})
		if err != nil {
			t.Fatalf("accepted config written out is refused: %v\n%s", err, buf.Bytes())
		}
		cfg2.Path = cfg.Path
		if !reflect.DeepEqual(cfg, cfg2) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", cfg, cfg2)
		}
	})
}
