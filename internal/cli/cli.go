// Package cli implements the vmm command line: every command of the quick
// start (create, list, inspect, events, stop, remove, snapshot …), their
// flags and their output. It talks to vmm-daemon only through
// internal/client and the sandbox.v1 API.
//
// Run is the whole program; cmd/vmm only wires the process's arguments,
// standard streams, environment and signals into it, so tests run the CLI
// in-process.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/firecracker-vmm/firecracker-vmm/internal/client"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// Exit codes of Run.
const (
	// ExitOK: the command succeeded.
	ExitOK = 0
	// ExitError: the command failed.
	ExitError = 1
	// ExitUsage: the command line was wrong.
	ExitUsage = 2
)

// EnvSocket names the environment variable that chooses the daemon socket.
const EnvSocket = "VMM_SOCKET"

// Run runs the vmm command line args (without the program name), writing
// to stdout and stderr and reading the environment through env (nil: an
// empty environment). It returns the process exit code: 0 on success, 1
// when the command failed, 2 on a usage error. Canceling ctx (SIGINT in
// cmd/vmm) ends streaming commands cleanly and aborts the others.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, env func(string) string) int {
	if env == nil {
		env = func(string) string { return "" }
	}
	if args == nil {
		// cobra reads os.Args when given nil.
		args = []string{}
	}
	a := &app{stdout: stdout, stderr: stderr, env: env}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetIn(strings.NewReader(""))

	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return ExitOK
	}
	var re *runError
	if errors.As(err, &re) {
		var ue *usageError
		if errors.As(re.err, &ue) {
			return a.usageFailure(cmd, ue)
		}
		fmt.Fprintf(stderr, "vmm: %s\n", sentence(re.err))
		return ExitError
	}
	// Everything cobra reports before a command runs (unknown command or
	// flag, wrong number of arguments, missing required flag) is a usage
	// error.
	return a.usageFailure(cmd, err)
}

func (a *app) usageFailure(cmd *cobra.Command, err error) int {
	fmt.Fprintf(a.stderr, "vmm: %s\n", err)
	path := "vmm"
	if cmd != nil {
		path = cmd.CommandPath()
	}
	fmt.Fprintf(a.stderr, "Run '%s --help' for usage.\n", path)
	return ExitUsage
}

// sentence renders an error for the user. The client already turns daemon
// errors into sentences; this adds words for the local ones.
func sentence(err error) string {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, errdefs.ErrCanceled):
		return "interrupted"
	}
	return err.Error()
}

// usageError is a command-line mistake found while a command runs
// (a bad flag value); Run exits with ExitUsage.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// runError marks an error returned by a command's body, as opposed to one
// cobra found while parsing the command line.
type runError struct{ err error }

func (e *runError) Error() string { return e.err.Error() }
func (e *runError) Unwrap() error { return e.err }

// app holds one invocation's streams, environment and global flags.
type app struct {
	stdout, stderr io.Writer
	env            func(string) string

	socket  string
	addr    string
	tls     client.TLSFiles
	timeout durationValue
}

// runE adapts a command body: its errors are marked as run errors.
func runE(fn func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := fn(cmd, args); err != nil {
			return &runError{err: err}
		}
		return nil
	}
}

// connect dials the daemon the global flags name.
func (a *app) connect(ctx context.Context) (*client.Client, error) {
	if a.socket == "" && a.addr == "" {
		return nil, usagef("--socket is empty")
	}
	if a.addr == "" && !a.tls.IsZero() {
		return nil, usagef("the TLS flags apply to --addr only")
	}
	return client.New(ctx, client.Options{
		Socket:         a.socket,
		Addr:           a.addr,
		TLS:            a.tls,
		ConnectTimeout: a.timeout.d,
	})
}

// withClient connects, runs fn and closes the connection.
func (a *app) withClient(ctx context.Context, fn func(*client.Client) error) error {
	c, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(c)
}

func (a *app) defaultSocket() string {
	if s := a.env(EnvSocket); s != "" {
		return s
	}
	return client.DefaultSocket
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "vmm",
		Short: "Manage Firecracker sandboxes through vmm-daemon",
		Long: `vmm manages sandboxes (Firecracker microVMs) through vmm-daemon.

It talks to the daemon on its unix socket (--socket, or $VMM_SOCKET, default
` + client.DefaultSocket + `) or on a TCP address (--addr, with the
--tls-* flags when the daemon requires TLS client certificates).`,
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          cobra.NoArgs,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if a.socket != "" {
				abs, err := filepath.Abs(a.socket)
				if err != nil {
					return fmt.Errorf("--socket %q: %w", a.socket, err)
				}
				a.socket = abs
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return cmd.Help()
		},
	}
	a.timeout.d = client.DefaultConnectTimeout
	pf := root.PersistentFlags()
	pf.StringVar(&a.socket, "socket", a.defaultSocket(), "unix socket of vmm-daemon ($"+EnvSocket+")")
	pf.StringVar(&a.addr, "addr", "", "TCP address (host:port) of vmm-daemon; overrides --socket")
	pf.StringVar(&a.tls.Cert, "tls-cert", "", "TLS client certificate (PEM) for --addr")
	pf.StringVar(&a.tls.Key, "tls-key", "", "TLS client key (PEM) for --addr")
	pf.StringVar(&a.tls.CA, "tls-ca", "", "CA bundle (PEM) that verifies the daemon's certificate for --addr")
	pf.Var(&a.timeout, "connect-timeout", "how long to wait for the daemon to accept the connection")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &usageError{msg: err.Error()}
	})

	root.AddCommand(
		a.createCommand(),
		a.listCommand(),
		a.inspectCommand(),
		a.eventsCommand(),
		a.stopCommand(),
		a.removeCommand(),
		a.snapshotCommand(),
		a.versionCommand(),
	)
	return root
}
