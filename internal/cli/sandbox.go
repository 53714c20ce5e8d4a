package cli

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/client"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// defaultWaitTimeout bounds `create --wait` unless --timeout says otherwise.
const defaultWaitTimeout = 2 * time.Minute

// exactArgs is cobra.ExactArgs with a sentence naming the argument.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == len(names) {
			return nil
		}
		if len(args) < len(names) {
			return fmt.Errorf("%q needs %s", cmd.CommandPath(), strings.Join(names[len(args):], " and "))
		}
		return fmt.Errorf("%q takes %d argument(s) (%s), got %d", cmd.CommandPath(), len(names), strings.Join(names, " "), len(args))
	}
}

// absPath makes a host path absolute: the daemon resolves paths in its own
// working directory, not the caller's.
func absPath(flag, p string) (string, error) {
	if p == "" {
		return "", nil
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", usagef("--%s %q: %v", flag, p, err)
	}
	return abs, nil
}

// completeSandboxIDs completes the first argument with the ids of the
// daemon's sandboxes.
func (a *app) completeSandboxIDs(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var ids []cobra.Completion
	_ = a.withClient(cmd.Context(), func(c *client.Client) error {
		sbs, err := c.List(cmd.Context(), &sandboxv1.ListRequest{})
		for _, sb := range sbs {
			if strings.HasPrefix(sb.GetId(), toComplete) {
				ids = append(ids, cobra.CompletionWithDesc(sb.GetId(), stateName(sb.GetState())))
			}
		}
		return err
	})
	return ids, cobra.ShellCompDirectiveNoFileComp
}

func completeStates(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return stateNames, cobra.ShellCompDirectiveNoFileComp
}

func addOutputFlag(cmd *cobra.Command, f *outputFormat, def outputFormat) {
	*f = def
	cmd.Flags().VarP(f, "output", "o", "output format: table or json")
	_ = cmd.RegisterFlagCompletionFunc("output", func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		return []cobra.Completion{"table", "json"}, cobra.ShellCompDirectiveNoFileComp
	})
}

func (a *app) createCommand() *cobra.Command {
	var (
		vcpus, memory          uint32
		kernel, rootfs, initrd string
		bootArgs               string
		labels                 []string
		ttl                    secondsValue
		trackDirty, wait       bool
		timeout                = durationValue{d: defaultWaitTimeout}
	)
	cmd := &cobra.Command{
		Use:   "create [flags]",
		Short: "Create a sandbox and print its id",
		Long: `Create a sandbox. The daemon returns at once while the microVM boots in the
background; create prints only the new sandbox's id on stdout.

With --wait, create waits until the sandbox is ready (progress on stderr) and
fails with the reason when it does not boot.`,
		Example: `  vmm create --vcpus 2 --memory 1024
  vmm create --kernel /path/to/vmlinux --rootfs /path/to/root.ext4
  vmm create --label env=dev --label owner=alice --ttl 300
  id=$(vmm create --wait --timeout 60s)`,
		Args: cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			// A zero on the wire means "the daemon's default": only an
			// absent flag may send it.
			for _, z := range []struct {
				name string
				v    uint32
			}{{"vcpus", vcpus}, {"memory", memory}} {
				if z.v == 0 && cmd.Flags().Changed(z.name) {
					return usagef("invalid --%s 0: give a positive number, or leave the flag out for the daemon's default", z.name)
				}
			}
			lbls, err := parseLabels(labels)
			if err != nil {
				return err
			}
			req := &sandboxv1.CreateRequest{
				Vcpus:           vcpus,
				MemoryMib:       memory,
				BootArgs:        bootArgs,
				Labels:          lbls,
				TrackDirtyPages: trackDirty,
			}
			if req.Kernel, err = absPath("kernel", kernel); err != nil {
				return err
			}
			if req.Rootfs, err = absPath("rootfs", rootfs); err != nil {
				return err
			}
			if req.Initrd, err = absPath("initrd", initrd); err != nil {
				return err
			}
			if ttl.n > 0 {
				req.Ttl = durationpb.New(ttl.duration())
			}
			ctx := cmd.Context()
			return a.withClient(ctx, func(c *client.Client) error {
				sb, err := c.Create(ctx, req)
				if err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, sb.GetId())
				if !wait {
					return nil
				}
				return a.waitReady(ctx, c, sb.GetId(), timeout.d)
			})
		}),
	}
	f := cmd.Flags()
	f.Uint32Var(&vcpus, "vcpus", 0, "number of vCPUs, at least 1 (default: the daemon's)")
	f.Uint32Var(&memory, "memory", 0, "memory in MiB, positive (default: the daemon's)")
	f.StringVar(&kernel, "kernel", "", "kernel image (default: the daemon's)")
	f.StringVar(&rootfs, "rootfs", "", "root filesystem image; the sandbox gets its own copy (default: the daemon's)")
	f.StringVar(&initrd, "initrd", "", "initrd image")
	f.StringVar(&bootArgs, "boot-args", "", "kernel command line (default: the daemon's)")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")
	f.Var(&ttl, "ttl", "remove the sandbox after this many seconds (0: never)")
	f.BoolVar(&trackDirty, "track-dirty-pages", false, "enable dirty-page tracking (for diff snapshots)")
	f.BoolVar(&wait, "wait", false, "wait until the sandbox is ready; fail with the reason if it does not boot")
	f.Var(&timeout, "timeout", "with --wait: how long to wait (e.g. 90s, 2m)")
	return cmd
}

func (a *app) listCommand() *cobra.Command {
	var (
		states, labels []string
		output         outputFormat
	)
	cmd := &cobra.Command{
		Use:     "list [flags]",
		Aliases: []string{"ls"},
		Short:   "List sandboxes",
		Example: `  vmm list
  vmm list --state ready --label env=dev
  vmm list -o json`,
		Args: cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			st, err := parseStates(states)
			if err != nil {
				return err
			}
			lbls, err := parseLabels(labels)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			return a.withClient(ctx, func(c *client.Client) error {
				sbs, err := c.List(ctx, &sandboxv1.ListRequest{States: st, Labels: lbls})
				if err != nil {
					return err
				}
				return writeList(a.stdout, output, sbs, viewOf, writeSandboxTable)
			})
		}),
	}
	f := cmd.Flags()
	f.StringArrayVar(&states, "state", nil, "only sandboxes in this state (repeatable): "+strings.Join(stateNames, ", "))
	f.StringArrayVar(&labels, "label", nil, "only sandboxes carrying label key=value (repeatable)")
	addOutputFlag(cmd, &output, formatTable)
	_ = cmd.RegisterFlagCompletionFunc("state", completeStates)
	return cmd
}

func (a *app) inspectCommand() *cobra.Command {
	var output outputFormat
	cmd := &cobra.Command{
		Use:               "inspect SANDBOX_ID",
		Short:             "Show everything about a sandbox",
		Args:              exactArgs("SANDBOX_ID"),
		ValidArgsFunction: a.completeSandboxIDs,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			return a.withClient(ctx, func(c *client.Client) error {
				sb, err := c.Inspect(ctx, args[0])
				if err != nil {
					return err
				}
				if output == formatJSON {
					return writeJSON(a.stdout, viewOf(sb))
				}
				return writeInspect(a.stdout, sb, time.Now())
			})
		}),
	}
	addOutputFlag(cmd, &output, formatTable)
	return cmd
}

func (a *app) stopCommand() *cobra.Command {
	var timeout secondsValue
	cmd := &cobra.Command{
		Use:   "stop SANDBOX_ID",
		Short: "Stop a sandbox (Ctrl+Alt+Del, then a kill after the timeout)",
		Long: `Stop a sandbox: ask the guest to shut down, wait up to the timeout for the
microVM to exit, then kill it. Prints the sandbox's id when it is stopped.`,
		Args:              exactArgs("SANDBOX_ID"),
		ValidArgsFunction: a.completeSandboxIDs,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			return a.withClient(ctx, func(c *client.Client) error {
				sb, err := c.Stop(ctx, args[0], timeout.duration())
				if err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, orDash(sb.GetId()))
				return nil
			})
		}),
	}
	cmd.Flags().Var(&timeout, "timeout", "seconds to wait for a graceful shutdown before killing (0: the daemon's default)")
	return cmd
}

func (a *app) removeCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "remove SANDBOX_ID",
		Aliases: []string{"rm"},
		Short:   "Remove a sandbox and everything it holds",
		Long: `Remove a sandbox: its directory, its disk copy and every other resource.
A sandbox that is still running needs --force (it is killed first).
Prints the sandbox's id when it is gone.`,
		Args:              exactArgs("SANDBOX_ID"),
		ValidArgsFunction: a.completeSandboxIDs,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			return a.withClient(ctx, func(c *client.Client) error {
				if err := c.Remove(ctx, args[0], force); err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, args[0])
				return nil
			})
		}),
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "kill and remove a sandbox that is still running")
	return cmd
}

// waitReady waits until sandbox id is ready, or fails with the reason it
// will not be. It subscribes to the sandbox's events before it looks at
// the current state, so no transition falls between the two, and polls
// Inspect as a backstop (and as the only source when the stream fails).
func (a *app) waitReady(ctx context.Context, c *client.Client, id string, timeout time.Duration) error {
	start := time.Now()
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	events := make(chan *sandboxv1.Event)
	streamDone := make(chan struct{})
	stream, err := c.Events(ctx, &sandboxv1.EventsRequest{Id: id})
	if err != nil {
		close(streamDone)
		events = nil
	} else {
		go func() {
			defer close(streamDone)
			for {
				ev, err := stream.Recv()
				if err != nil {
					return
				}
				select {
				case events <- ev:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	// The reader ends when ctx is canceled (stream.Recv returns).
	defer func() { cancel(); <-streamDone }()

	fmt.Fprintf(a.stderr, "waiting for sandbox %s to become ready\n", id)
	last := ""
	progress := func(state, action string) {
		if state == last {
			return
		}
		last = state
		if action != "" && action != state {
			fmt.Fprintf(a.stderr, "sandbox %s: %s (%s) after %s\n", id, state, action, time.Since(start).Round(time.Millisecond))
		} else {
			fmt.Fprintf(a.stderr, "sandbox %s: %s after %s\n", id, state, time.Since(start).Round(time.Millisecond))
		}
	}
	// check inspects the sandbox and reports whether waiting is over.
	check := func() (bool, error) {
		sb, err := c.Inspect(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return false, nil
			}
			if errdefs.IsNotFound(err) {
				return true, fmt.Errorf("sandbox %s was removed before it became ready", id)
			}
			return true, err
		}
		state := stateName(sb.GetState())
		progress(state, "")
		switch sb.GetState() {
		case sandboxv1.SandboxState_SANDBOX_STATE_READY, sandboxv1.SandboxState_SANDBOX_STATE_RUNNING:
			return true, nil
		case sandboxv1.SandboxState_SANDBOX_STATE_FAILED:
			return true, fmt.Errorf("sandbox %s failed: %s", id, orReason(sb.GetFailureReason()))
		case sandboxv1.SandboxState_SANDBOX_STATE_STOPPING, sandboxv1.SandboxState_SANDBOX_STATE_STOPPED:
			return true, fmt.Errorf("sandbox %s is %s and will not become ready: %s", id, state, orReason(sb.GetFailureReason()))
		}
		return false, nil
	}

	if done, err := check(); done {
		return err
	}
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	ended := streamDone
	for {
		select {
		case <-ctx.Done():
			if parent.Err() != nil {
				return fmt.Errorf("interrupted while waiting for sandbox %s (it keeps booting; see 'vmm inspect %s')", id, id)
			}
			return fmt.Errorf("sandbox %s did not become ready within %s (state: %s)", id, timeout, orDash(last))
		case <-ended:
			// The stream ended (daemon restart, slow consumer, no
			// Events support): keep polling.
			ended = nil
		case ev := <-events:
			if ev.GetAction() == "removed" || ev.GetAction() == "expired" {
				return fmt.Errorf("sandbox %s was removed before it became ready", id)
			}
			progress(stateName(ev.GetState()), ev.GetAction())
			if done, err := check(); done {
				return err
			}
		case <-ticker.C:
			if done, err := check(); done {
				return err
			}
		}
	}
}

func orReason(s string) string {
	if s == "" {
		return "no reason given"
	}
	return s
}
