package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/client"
)

// eventActions lists the actions the daemon emits (for completion only; the
// daemon validates).
var eventActions = []string{"created", "ready", "failed", "stopping", "stopped", "exited", "removed", "expired", "checkpointed", "restored"}

func (a *app) eventsCommand() *cobra.Command {
	var (
		id      string
		actions []string
		since   uint64
	)
	cmd := &cobra.Command{
		Use:   "events [flags]",
		Short: "Stream sandbox lifecycle events",
		Long: `Stream sandbox lifecycle events, one line each:

  TIME SEQ SANDBOX_ID ACTION STATE [KEY=VALUE...]

until interrupted (Ctrl+C) or until the daemon ends the stream.`,
		Example: `  vmm events
  vmm events --id 01jd2z9k3m4p --action ready --action failed
  vmm events --since 120`,
		Args: cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			req := &sandboxv1.EventsRequest{Id: id, Actions: splitList(actions), Since: since}
			return a.withClient(ctx, func(c *client.Client) error {
				return a.streamEvents(ctx, c, req)
			})
		}),
	}
	f := cmd.Flags()
	f.StringVar(&id, "id", "", "only events of this sandbox")
	f.StringArrayVar(&actions, "action", nil, "only events with this action (repeatable): created, ready, failed, stopped, …")
	f.Uint64Var(&since, "since", 0, "first replay retained events with a sequence number above this one")
	_ = cmd.RegisterFlagCompletionFunc("id", a.completeSandboxIDs)
	_ = cmd.RegisterFlagCompletionFunc("action", func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		return eventActions, cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}

// streamEvents prints events until ctx is canceled (a clean end) or the
// daemon ends the stream.
func (a *app) streamEvents(ctx context.Context, c *client.Client, req *sandboxv1.EventsRequest) error {
	stream, err := c.Events(ctx, req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil
			}
			return err
		}
		if _, err := fmt.Fprintln(a.stdout, eventLine(ev)); err != nil {
			return fmt.Errorf("writing event: %w", err)
		}
	}
}
