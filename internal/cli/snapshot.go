package cli

import (
	"fmt"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/client"
)

func (a *app) snapshotCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Checkpoint sandboxes and restore new ones from checkpoints",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cmd.Help()
		},
	}
	cmd.AddCommand(
		a.snapshotCreateCommand(),
		a.snapshotListCommand(),
		a.snapshotRestoreCommand(),
		a.snapshotDeleteCommand(),
	)
	return cmd
}

func (a *app) snapshotCreateCommand() *cobra.Command {
	var (
		name string
		diff bool
	)
	cmd := &cobra.Command{
		Use:               "create SANDBOX_ID --name NAME",
		Short:             "Checkpoint a sandbox and print the snapshot's id",
		Example:           `  vmm snapshot create 01jd2z9k3m4p --name my-checkpoint`,
		Args:              exactArgs("SANDBOX_ID"),
		ValidArgsFunction: a.completeSandboxIDs,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			req := &sandboxv1.CheckpointRequest{
				SandboxId: args[0],
				Name:      name,
				Type:      sandboxv1.SnapshotType_SNAPSHOT_TYPE_FULL,
			}
			if diff {
				req.Type = sandboxv1.SnapshotType_SNAPSHOT_TYPE_DIFF
			}
			ctx := cmd.Context()
			return a.withClient(ctx, func(c *client.Client) error {
				snap, err := c.Checkpoint(ctx, req)
				if err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, snap.GetId())
				return nil
			})
		}),
	}
	cmd.Flags().StringVar(&name, "name", "", "snapshot name, unique per sandbox (letters, digits, '.', '_', '-')")
	cmd.Flags().BoolVar(&diff, "diff", false, "take a diff snapshot (needs --track-dirty-pages at create)")
	_ = cmd.MarkFlagRequired("name")
	return cmd
}

func (a *app) snapshotListCommand() *cobra.Command {
	var (
		sandboxID string
		output    outputFormat
	)
	cmd := &cobra.Command{
		Use:     "list [flags]",
		Aliases: []string{"ls"},
		Short:   "List snapshots",
		Args:    cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			return a.withClient(ctx, func(c *client.Client) error {
				snaps, err := c.ListSnapshots(ctx, sandboxID)
				if err != nil {
					return err
				}
				return writeList(a.stdout, output, snaps, snapshotViewOf, writeSnapshotTable)
			})
		}),
	}
	cmd.Flags().StringVar(&sandboxID, "sandbox-id", "", "only snapshots of this sandbox")
	_ = cmd.RegisterFlagCompletionFunc("sandbox-id", a.completeSandboxIDs)
	addOutputFlag(cmd, &output, formatTable)
	return cmd
}

func (a *app) snapshotRestoreCommand() *cobra.Command {
	var (
		ttl    secondsValue
		labels []string
	)
	cmd := &cobra.Command{
		Use:     "restore SNAPSHOT_ID",
		Short:   "Create a sandbox from a snapshot and print its id",
		Example: `  vmm snapshot restore 01jd2zb7q8rs --ttl 600`,
		Args:    exactArgs("SNAPSHOT_ID"),
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			lbls, err := parseLabels(labels)
			if err != nil {
				return err
			}
			req := &sandboxv1.RestoreRequest{SnapshotId: args[0], Labels: lbls}
			if ttl.n > 0 {
				req.Ttl = durationpb.New(ttl.duration())
			}
			ctx := cmd.Context()
			return a.withClient(ctx, func(c *client.Client) error {
				sb, err := c.Restore(ctx, req)
				if err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, sb.GetId())
				return nil
			})
		}),
	}
	cmd.Flags().Var(&ttl, "ttl", "remove the new sandbox after this many seconds (0: never)")
	cmd.Flags().StringArrayVar(&labels, "label", nil, "label key=value for the new sandbox (repeatable)")
	return cmd
}

func (a *app) snapshotDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "delete SNAPSHOT_ID",
		Aliases: []string{"rm"},
		Short:   "Delete a snapshot and its files",
		Args:    exactArgs("SNAPSHOT_ID"),
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			return a.withClient(ctx, func(c *client.Client) error {
				if err := c.DeleteSnapshot(ctx, args[0]); err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, args[0])
				return nil
			})
		}),
	}
}
