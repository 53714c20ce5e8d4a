package fcemu

import (
	"fmt"
	"io"
	"runtime/debug"
	"strconv"
	"strings"
)

// Versions reproduced by the emulator.
const (
	// FirecrackerVersion is the Firecracker release the emulator imitates.
	FirecrackerVersion = "1.16.1"
	// SnapshotVersion is the snapshot data format version of that release.
	SnapshotVersion = "10.0.0"
)

// Exit codes of Firecracker (src/vmm/src/lib.rs FcExitCode).
const (
	exitOK               = 0
	exitGeneric          = 1
	exitBadConfiguration = 152
	exitArgParsing       = 153
	exitSIGHUP           = 156
)

// flagSpec describes one command-line argument.
type flagSpec struct {
	name     string
	value    bool
	def      string
	help     string
	requires string
	forbids  string
}

var flagSpecs = []flagSpec{
	{name: "api-sock", value: true, def: "/run/firecracker.socket", help: "Path to unix domain socket used by the API."},
	{name: "id", value: true, def: "anonymous-instance", help: "MicroVM unique identifier."},
	{name: "seccomp-filter", value: true, forbids: "no-seccomp", help: "Optional parameter which allows specifying the path to a custom seccomp filter. For advanced users."},
	{name: "no-seccomp", help: "Optional parameter which allows starting and using a microVM without seccomp filtering. Not recommended."},
	{name: "start-time-us", value: true},
	{name: "start-time-cpu-us", value: true},
	{name: "parent-cpu-time-us", value: true},
	{name: "config-file", value: true, help: "Path to a file that contains the microVM configuration in JSON format."},
	{name: "no-api", requires: "config-file", help: "Optional parameter which allows starting and using a microVM without an active API socket."},
	{name: "log-path", value: true, help: "Path to a fifo or a file used for configuring the logger on startup."},
	{name: "level", value: true, help: "Set the logger level."},
	{name: "module", value: true, help: "Set the logger module filter."},
	{name: "show-level", help: "Whether or not to output the level in the logs."},
	{name: "show-log-origin", help: "Whether or not to include the file path and line number of the log's origin."},
	{name: "metrics-path", value: true, help: "Path to a fifo or a file used for configuring the metrics on startup."},
	{name: "boot-timer", help: "Whether or not to load boot timer device for logging elapsed time since InstanceStart command."},
	{name: "version", help: "Print the binary version number."},
	{name: "snapshot-version", help: "Print the supported data format version."},
	{name: "describe-snapshot", value: true, help: "Print the data format version of the provided snapshot state file."},
	{name: "http-api-max-payload-size", value: true, def: "51200", help: "Http API request payload max size, in bytes."},
	{name: "mmds-size-limit", value: true, help: "Mmds data store limit, in bytes."},
	{name: "metadata", value: true, help: "Path to a file that contains metadata in JSON format to add to the mmds."},
	{name: "enable-pci", help: "Enables PCIe support."},
	{name: "help", help: "Show the help message."},
}

// options are the parsed command line.
type options struct {
	values map[string]string
	flags  map[string]bool
}

func (o *options) get(name string) (string, bool) {
	v, ok := o.values[name]
	if !ok {
		for _, f := range flagSpecs {
			if f.name == name && f.def != "" {
				return f.def, false
			}
		}
	}
	return v, ok
}

func (o *options) has(name string) bool {
	_, v := o.values[name]
	return v || o.flags[name]
}

// argError is a command-line parsing failure (exit 153).
type argError string

func (e argError) Error() string { return string(e) }

// parseArgs implements Firecracker's arg_parser rules.
func parseArgs(args []string) (*options, error) {
	o := &options{values: map[string]string{}, flags: map[string]bool{}}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		name := ""
		switch {
		case a == "-h":
			name = "help"
		case strings.HasPrefix(a, "--"):
			name = a[2:]
		default:
			return nil, argError(fmt.Sprintf("Found argument '%s' which wasn't expected, or isn't valid in this context.", a))
		}
		var spec *flagSpec
		for j := range flagSpecs {
			if flagSpecs[j].name == name {
				spec = &flagSpecs[j]
			}
		}
		if spec == nil {
			return nil, argError(fmt.Sprintf("Found argument '%s' which wasn't expected, or isn't valid in this context.", name))
		}
		if o.has(name) {
			return nil, argError(fmt.Sprintf("The argument '%s' was provided more than once.", name))
		}
		if !spec.value {
			o.flags[name] = true
			continue
		}
		if i+1 >= len(args) || strings.HasPrefix(args[i+1], "--") {
			return nil, argError(fmt.Sprintf("The argument '%s' requires a value, but none was supplied.", name))
		}
		o.values[name] = args[i+1]
		i++
	}
	for _, f := range flagSpecs {
		if !o.has(f.name) {
			continue
		}
		if f.requires != "" && !o.has(f.requires) {
			return nil, argError(fmt.Sprintf("Argument '%s' required, but not found.", f.requires))
		}
		if f.forbids != "" && o.has(f.forbids) {
			return nil, argError(fmt.Sprintf("Argument '%s' cannot be used together with argument '%s'.", f.name, f.forbids))
		}
	}
	return o, nil
}

// shortCircuit reports --help/-h or --version before any other parsing,
// like Firecracker's parser.
func shortCircuit(args []string) string {
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "--help" || a == "-h" {
			return "help"
		}
	}
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "--version" {
			return "version"
		}
	}
	return ""
}

func helpText() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Firecracker v%s\n\nLaunch a microvm.\n\nOptional arguments:\n", FirecrackerVersion)
	for _, f := range flagSpecs {
		if f.help == "" {
			continue
		}
		arg := "--" + f.name
		if f.value {
			arg += " <" + f.name + ">"
		}
		fmt.Fprintf(&b, "  %s  %s", arg, f.help)
		if f.def != "" {
			fmt.Fprintf(&b, " [default: %q]", f.def)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// validInstanceID applies Firecracker's instance id rule: 1-64 bytes,
// alphanumeric or '-'.
func validInstanceID(id string) error {
	if len(id) == 0 || len(id) > 64 {
		return fmt.Errorf("InvalidLen(%d, 1, 64)", len(id))
	}
	for i, c := range []byte(id) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("InvalidChar('%c', %d)", c, i)
		}
	}
	return nil
}

// abort reproduces a Rust panic with panic=abort: a message on stderr and
// death by SIGABRT.
func abort(stderr io.Writer, msg string) {
	fmt.Fprintf(stderr, "thread 'main' panicked at src/firecracker/src/main.rs:\n%s\n", msg)
	debug.SetTraceback("crash")
	panic("firecracker-emulator: " + msg)
}

// parseUintFlag parses a numeric flag or aborts like Firecracker's expect().
func parseUintFlag(stderr io.Writer, o *options, name string) (uint64, bool) {
	v, set := o.get(name)
	if v == "" {
		return 0, false
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		abort(stderr, fmt.Sprintf("Invalid value for %s: %v", name, err))
	}
	return n, set || v != ""
}
