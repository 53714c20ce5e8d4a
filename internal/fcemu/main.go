package fcemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// Main runs the emulator with Firecracker's command line and returns the
// process exit code. Some paths never return: an invalid --id, an
// unreadable --config-file or --metadata, or a non-numeric size flag abort
// the process with SIGABRT like Firecracker's panics. The caller must exit
// the process with the returned code promptly: goroutines blocked by
// injected faults are not waited for.
func Main(args, environ []string, stdout, stderr io.Writer) int {
	switch shortCircuit(args) {
	case "help":
		fmt.Fprint(stdout, helpText())
		return exitOK
	case "version":
		fmt.Fprintf(stdout, "Firecracker v%s\n\n", FirecrackerVersion)
		return exitOK
	}
	o, err := parseArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "Arguments parsing error: %s\n\nFor more information try --help.\n", err)
		return exitArgParsing
	}
	if o.has("snapshot-version") {
		fmt.Fprintf(stdout, "v%s\n", SnapshotVersion)
		return exitOK
	}
	if p, ok := o.values["describe-snapshot"]; ok {
		ver, err := describeSnapshot(p)
		if err != nil {
			fmt.Fprintf(stderr, "Error printing snapshot data format: %v\n", err)
			return exitGeneric
		}
		fmt.Fprintf(stdout, "%s\n", ver)
		return exitOK
	}
	level := levelInfo
	if l, ok := o.values["level"]; ok {
		lv, good := parseLevel(l)
		if !good {
			fmt.Fprintf(stderr, "Invalid value for logger level: %s.Possible values: [Off, Error, Warning, Info, Debug, Trace]\n", l)
			return exitBadConfiguration
		}
		level = lv
	}
	id, _ := o.get("id")
	if err := validInstanceID(id); err != nil {
		abort(stderr, fmt.Sprintf("Invalid instance ID: %v", err))
	}
	maxPayload, _ := parseUintFlag(stderr, o, "http-api-max-payload-size")
	mmdsLimit, hasMmdsLimit := parseUintFlag(stderr, o, "mmds-size-limit")
	if !hasMmdsLimit {
		mmdsLimit = maxPayload
	}
	for _, name := range []string{"start-time-us", "start-time-cpu-us", "parent-cpu-time-us"} {
		parseUintFlag(stderr, o, name)
	}
	if p, ok := o.values["seccomp-filter"]; ok {
		if _, err := os.Stat(p); err != nil {
			fmt.Fprintf(stderr, "Seccomp error: Failed to open the seccomp filter file: %s\n", rustIOError(err))
			return exitGeneric
		}
	}
	env := map[string]string{}
	for _, kv := range environ {
		if k, val, ok := strings.Cut(kv, "="); ok {
			env[k] = val
		}
	}
	flt, err := parseFaults(env["FCEMU_FAULTS"])
	if err != nil {
		fmt.Fprintf(stderr, "firecracker-emulator: %v\n", err)
		return exitGeneric
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	v := newVMM(ctx, id, env, stdout, flt)
	v.enablePCI = o.has("enable-pci")
	v.mmdsLimit = int(mmdsLimit)
	v.log.level = level
	v.log.showLevel = o.has("show-level")
	v.log.showOrigin = o.has("show-log-origin")
	v.log.module, _ = o.get("module")
	if p, ok := o.values["log-path"]; ok {
		if err := v.log.setPath(p); err != nil {
			fmt.Fprintf(stderr, "Failed to initialize logger: %s\n", rustIOError(err))
			return exitGeneric
		}
	}
	if p, ok := o.values["metrics-path"]; ok {
		if err := v.configureMetrics(p, false, nil); err != nil {
			fmt.Fprintf(stderr, "Failed to initialize metrics: %v\n", err)
			return exitGeneric
		}
	}
	if p, ok := o.values["metadata"]; ok {
		data, err := os.ReadFile(p)
		if err != nil {
			abort(stderr, fmt.Sprintf("Unable to open or read from the mmds content file: %v", err))
		}
		var md any
		if err := json.Unmarshal(data, &md); err != nil {
			abort(stderr, fmt.Sprintf("Invalid metadata: %v", err))
		}
		v.mmdsData, v.mmdsInit = md, true
	}
	v.log.info("Running Firecracker v%s", FirecrackerVersion)

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGPIPE, syscall.SIGQUIT)
	defer signal.Stop(sigs)

	for _, r := range flt.timed(faultExitAfter) {
		code := r.code
		v.after(time.Duration(r.ms)*time.Millisecond, func() {
			v.log.warn("Injected fault: exiting with code %d", code)
			v.exit(code)
		})
	}

	if !o.has("no-api") {
		sock, _ := o.get("api-sock")
		ln, err := listenAPI(sock)
		if err != nil {
			fmt.Fprintf(stderr, "Failed to open the API socket at: %s. Check that it is not already used.\n", sock)
			v.exit(exitGeneric)
			return <-v.exitCh
		}
		srv := newHTTPServer(ln, int(maxPayload), v.handle)
		v.background.Add(1)
		go func() {
			defer v.background.Done()
			_ = srv.serve(ctx)
		}()
	}
	if p, ok := o.values["config-file"]; ok {
		data, err := os.ReadFile(p)
		if err != nil {
			abort(stderr, fmt.Sprintf("Unable to read config file: %v", err))
		}
		if err := v.applyConfigFile(data); err != nil {
			v.log.logf(levelError, "main", "firecracker/src/main.rs:1", "Building VMM configured from cmdline json failed: %v", err)
			fmt.Fprintf(stderr, "Building VMM configured from cmdline json failed: %v\n", err)
			v.exit(exitGeneric)
			return <-v.exitCh
		}
	}

	for {
		select {
		case code := <-v.exitCh:
			return code
		case s := <-sigs:
			if s == syscall.SIGQUIT {
				// Firecracker has no SIGQUIT handler; Go's default would
				// dump goroutines and exit 2 instead of dying by the signal.
				dieBySignal(syscall.SIGQUIT)
			}
			if s == syscall.SIGPIPE {
				v.met.add("signals", "sigpipe", 1)
				v.log.warn("Received signal SIGPIPE")
				continue
			}
			v.met.add("signals", "sighup", 1)
			v.log.logf(levelError, "main", "vmm/src/signal_handler.rs:1", "Shutting down VM after intercepting signal 1, code 0")
			v.met.flush()
			return exitSIGHUP
		}
	}
}

// listenAPI binds the API socket; an existing path is an error and the
// socket file is never unlinked by the emulator.
func listenAPI(path string) (*net.UnixListener, error) {
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("%s: %w", path, os.ErrExist)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	return ln, nil
}

// applyConfigFile builds and starts the VM from a --config-file document
// (kebab-case sections, processed in Firecracker's order).
func (v *vmm) applyConfigFile(data []byte) error {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("invalid JSON: %w", err)
	}
	present := func(k string) bool {
		r, ok := doc[k]
		return ok && string(r) != "null"
	}
	for _, k := range []string{"boot-source", "drives"} {
		if !present(k) {
			return fmt.Errorf("missing field `%s`", k)
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	put := func(path string, body []byte) error {
		segs := strings.Split(strings.TrimPrefix(path, "/"), "/")
		_, err := v.route(&request{method: "PUT", path: path, body: body, hasBody: true}, segs)
		return err
	}
	single := []struct{ key, path string }{
		{"logger", "/logger"}, {"metrics", "/metrics"}, {"machine-config", "/machine-config"},
		{"cpu-config", "/cpu-config"}, {"boot-source", "/boot-source"},
	}
	for _, s := range single {
		if !present(s.key) {
			continue
		}
		body := []byte(doc[s.key])
		if s.key == "cpu-config" {
			var p string
			if json.Unmarshal(body, &p) == nil {
				b, err := os.ReadFile(p)
				if err != nil {
					return fmt.Errorf("cpu-config: %w", err)
				}
				body = b
			}
		}
		if err := put(s.path, body); err != nil {
			return err
		}
	}
	lists := []struct{ key, path, idField string }{
		{"drives", "/drives/", "drive_id"}, {"network-interfaces", "/network-interfaces/", "iface_id"},
	}
	later := []struct{ key, path string }{
		{"vsock", "/vsock"}, {"balloon", "/balloon"}, {"mmds-config", "/mmds/config"}, {"entropy", "/entropy"},
	}
	for _, l := range lists {
		if err := v.putList(doc, l.key, l.path, l.idField, put); err != nil {
			return err
		}
	}
	for _, s := range later {
		if present(s.key) {
			if err := put(s.path, doc[s.key]); err != nil {
				return err
			}
		}
	}
	if err := v.putList(doc, "pmem", "/pmem/", "id", put); err != nil {
		return err
	}
	if present("memory-hotplug") {
		if err := put("/hotplug/memory", doc["memory-hotplug"]); err != nil {
			return err
		}
	}
	if _, err := v.instanceStart(); err != nil {
		return err
	}
	return nil
}

func (v *vmm) putList(doc map[string]json.RawMessage, key, path, idField string, put func(string, []byte) error) error {
	raw, ok := doc[key]
	if !ok || string(raw) == "null" {
		return nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return fmt.Errorf("%s: invalid type, expected a sequence: %w", key, err)
	}
	for _, it := range items {
		var m map[string]any
		if err := json.Unmarshal(it, &m); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		id, _ := m[idField].(string)
		if id == "" {
			return errors.New(msgEmptyID)
		}
		if err := put(path+id, it); err != nil {
			return err
		}
	}
	return nil
}
