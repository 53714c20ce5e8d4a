package vmm

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// DefaultSocketTimeout is how long a launcher waits for the API socket when
// Config.SocketTimeout is zero.
const DefaultSocketTimeout = 5 * time.Second

// Config holds the options of the Firecracker process itself (command-line
// flags and environment). The zero value is not usable: Binary is required.
type Config struct {
	// Binary is the path (or PATH-relative name) of the firecracker binary. Required.
	Binary string
	// LogLevel is passed as --level (Off, Error, Warn, Warning, Info, Debug,
	// Trace; case-insensitive). A VM's own LoggingSpec.Level overrides it.
	LogLevel string
	// NoSeccomp passes --no-seccomp (not for production).
	NoSeccomp bool
	// SeccompFilter passes --seccomp-filter with this compiled BPF file.
	// Mutually exclusive with NoSeccomp.
	SeccompFilter string
	// HTTPAPIMaxPayloadSize passes --http-api-max-payload-size when > 0.
	HTTPAPIMaxPayloadSize int64
	// MMDSSizeLimit passes --mmds-size-limit when > 0.
	MMDSSizeLimit int64
	// SocketTimeout bounds the wait for the API socket (socket_timeout_secs);
	// zero means DefaultSocketTimeout.
	SocketTimeout time.Duration
	// BootTimer passes --boot-timer.
	BootTimer bool
	// Env is extra environment ("KEY=value") for the child. The child gets
	// PATH from the caller plus Env, nothing else.
	Env []string
}

// Invocation holds the per-process values of the command line, as the paths
// Firecracker must be given (already mapped for a jail, if any).
type Invocation struct {
	// ID is the instance id (1–64 bytes of [A-Za-z0-9-]). Required.
	ID string
	// APISocket is the --api-sock path. Required.
	APISocket string
	// LogLevel overrides Config.LogLevel when not empty.
	LogLevel string
	// LogPath passes --log-path when not empty.
	LogPath string
	// MetricsPath passes --metrics-path when not empty.
	MetricsPath string
}

// ValidateInstanceID checks Firecracker's rule for --id: 1–64 bytes, each an
// ASCII letter, digit or '-'.
func ValidateInstanceID(id string) error {
	if len(id) == 0 || len(id) > 64 {
		return fmt.Errorf("instance id %q: must be 1-64 bytes long", id)
	}
	for _, c := range []byte(id) {
		if !isAlnum(c) && c != '-' {
			return fmt.Errorf("instance id %q: only letters, digits and '-' are allowed", id)
		}
	}
	return nil
}

// ValidateLogLevel checks a Firecracker --level value (case-insensitive).
func ValidateLogLevel(level string) error {
	switch strings.ToLower(level) {
	case "off", "error", "warn", "warning", "info", "debug", "trace":
		return nil
	}
	return fmt.Errorf("log level %q: want one of Off, Error, Warning, Info, Debug, Trace", level)
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// Validate checks the process options.
func (c Config) Validate() error {
	var errs []error
	if c.Binary == "" {
		errs = append(errs, errors.New("firecracker binary: required"))
	}
	if c.NoSeccomp && c.SeccompFilter != "" {
		errs = append(errs, errors.New("NoSeccomp and SeccompFilter are mutually exclusive"))
	}
	if c.LogLevel != "" {
		if err := ValidateLogLevel(c.LogLevel); err != nil {
			errs = append(errs, err)
		}
	}
	if c.HTTPAPIMaxPayloadSize < 0 {
		errs = append(errs, errors.New("HTTPAPIMaxPayloadSize: must not be negative"))
	}
	if c.MMDSSizeLimit < 0 {
		errs = append(errs, errors.New("MMDSSizeLimit: must not be negative"))
	}
	if c.SocketTimeout < 0 {
		errs = append(errs, errors.New("SocketTimeout: must not be negative"))
	}
	return errors.Join(errs...)
}

// Args returns Firecracker's arguments (without argv[0]) for cfg and inv, in
// this stable order, each flag and value as separate words:
//
//	--api-sock PATH --id ID [--level L] [--log-path P] [--metrics-path P]
//	[--no-seccomp | --seccomp-filter P] [--http-api-max-payload-size N]
//	[--mmds-size-limit N] [--boot-timer]
func Args(cfg Config, inv Invocation) ([]string, error) {
	return buildArgs(cfg, inv, true)
}

// buildArgs is Args; without withID the --id pair is left out (the jailer
// passes --id itself and a second one makes Firecracker exit).
func buildArgs(cfg Config, inv Invocation, withID bool) ([]string, error) {
	var errs []error
	if err := ValidateInstanceID(inv.ID); err != nil {
		errs = append(errs, err)
	}
	if inv.APISocket == "" {
		errs = append(errs, errors.New("API socket path: required"))
	}
	if cfg.NoSeccomp && cfg.SeccompFilter != "" {
		errs = append(errs, errors.New("NoSeccomp and SeccompFilter are mutually exclusive"))
	}
	level := cfg.LogLevel
	if inv.LogLevel != "" {
		level = inv.LogLevel
	}
	if level != "" {
		if err := ValidateLogLevel(level); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("vmm: firecracker arguments: %w", err)
	}
	args := []string{"--api-sock", inv.APISocket}
	if withID {
		args = append(args, "--id", inv.ID)
	}
	if level != "" {
		args = append(args, "--level", level)
	}
	if inv.LogPath != "" {
		args = append(args, "--log-path", inv.LogPath)
	}
	if inv.MetricsPath != "" {
		args = append(args, "--metrics-path", inv.MetricsPath)
	}
	switch {
	case cfg.NoSeccomp:
		args = append(args, "--no-seccomp")
	case cfg.SeccompFilter != "":
		args = append(args, "--seccomp-filter", cfg.SeccompFilter)
	}
	if cfg.HTTPAPIMaxPayloadSize > 0 {
		args = append(args, "--http-api-max-payload-size", strconv.FormatInt(cfg.HTTPAPIMaxPayloadSize, 10))
	}
	if cfg.MMDSSizeLimit > 0 {
		args = append(args, "--mmds-size-limit", strconv.FormatInt(cfg.MMDSSizeLimit, 10))
	}
	if cfg.BootTimer {
		args = append(args, "--boot-timer")
	}
	return args, nil
}
