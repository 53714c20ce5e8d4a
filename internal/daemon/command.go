package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// Main runs vmm-daemon with args (without the program name) until ctx ends
// and returns the process exit code: 0 after a clean shutdown, 1 when
// start-up or shutdown failed (with a one-line message on stderr), 2 for a
// usage error. Logs go to stderr.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := NewCommand(stderr)
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "vmm-daemon: %s\n", oneLine(err.Error()))
		if errors.As(err, new(usageError)) {
			return 2
		}
		return 1
	}
	return 0
}

// usageError marks errors in the command line itself.
type usageError struct{ error }

// NewCommand returns the vmm-daemon cobra command. Logs are written to
// logOut.
func NewCommand(logOut io.Writer) *cobra.Command {
	var (
		configPath string
		ov         Overrides
	)
	cmd := &cobra.Command{
		Use:   "vmm-daemon",
		Short: "Serve the sandbox.v1 gRPC API and manage Firecracker microVM sandboxes",
		Long: `vmm-daemon manages Firecracker microVM sandboxes and serves the sandbox.v1 gRPC API
on a unix socket (and optionally on TCP with mutual TLS). It runs until SIGINT or
SIGTERM, then stops every sandbox and exits.

Every setting lives in the TOML config file (see docs/config.example.toml); the
flags below override the file.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unexpected argument %q (vmm-daemon takes only flags; see --help)", args[0])}
			}
			return nil
		},
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := Load(configPath, cmd.Flags().Changed("config"), ov)
			if err != nil {
				return err
			}
			log := NewLogger(logOut, cfg.Daemon.LogLevel, cfg.Daemon.LogFormat)
			d := New(cfg, log)
			if err := d.SetCrashPoint(os.Getenv(CrashEnv)); err != nil {
				return err
			}
			return d.Run(cmd.Context())
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	f := cmd.Flags()
	f.StringVar(&configPath, "config", DefaultConfigPath, "path of the TOML config file")
	f.StringVar(&ov.DataDir, "data-dir", "", "override [firecracker] data_dir (for development)")
	f.StringVar(&ov.UnixSocket, "socket", "", "override [grpc] unix_socket (for development)")
	f.StringVar(&ov.TCPAddr, "tcp-addr", "", "override [grpc] tcp_addr (host:port; needs TLS settings or tcp_insecure)")
	f.StringVar(&ov.LogLevel, "log-level", "", "override [daemon] log_level: debug, info, warn or error")
	return cmd
}

// oneLine joins the lines of a (possibly joined) error message.
func oneLine(s string) string {
	return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ")
}
