package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
)

// startNetworked starts the daemon series with networking on, inside a
// network namespace created for the run; cleanup deletes the namespace.
func startNetworked(ctx context.Context, o Options) (*daemonSeries, func(), error) {
	name := fmt.Sprintf("vmmbench-%d", os.Getpid())
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("creating network namespace %s (needs root and iproute2): %v: %s", name, err, out)
	}
	cleanup := func() { _ = exec.Command("ip", "netns", "del", name).Run() }
	if out, err := exec.CommandContext(ctx, "ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("lo up: %v: %s", err, out)
	}
	d, err := startDaemon(ctx, o, "daemon+net", "/run/netns/"+name)
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	return d, cleanup, nil
}

// daemonSeries creates sandboxes through a vmm-daemon it started (inside
// the network namespace at netns, with networking on, when netns is set)
// and measures Create until the ready event.
type daemonSeries struct {
	label  string
	cmd    *exec.Cmd
	log    *os.File
	conn   *grpc.ClientConn
	sb     sandboxv1.SandboxServiceClient
	w      *waiters
	cancel context.CancelFunc // ends the event stream
	// ids are the sandboxes created (index i by create(i)); restored
	// ones are appended by snapshots.
	ids []string
}

func startDaemon(ctx context.Context, o Options, label, netns string) (_ *daemonSeries, err error) {
	o.logf("%s: %d creates through vmm-daemon, concurrency %d", label, o.N, o.Concurrency)
	dir := filepath.Join(o.Dir, label)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	fc, err := wrapper(dir, o.Firecracker, o.Env)
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "vmm.sock")
	cfg := filepath.Join(dir, "config.toml")
	conf := fmt.Sprintf(`[firecracker]
binary = %q
data_dir = %q
log_level = "Warning"

[grpc]
unix_socket = %q

[defaults]
vcpus = %d
memory_mib = %d
kernel = %q
rootfs = %q
boot_args = %q

[network]
%s

[limits]
max_sandboxes = %d
# Emulated guests use no host memory or CPU of their own: the host budget
# is sized to what the benchmark creates.
max_total_vcpus = %d
max_total_memory_mib = %d
allowed_dirs = [%q, %q]

[daemon]
log_level = "warn"
on_shutdown = "stop"
`, fc, filepath.Join(dir, "data"), sock, o.VCPUs, o.MemoryMiB, o.kernel(), o.rootfs(), bootArgs, networkConf(netns), o.N+o.Snapshots+10,
		(o.N+o.Snapshots+10)*o.VCPUs, (o.N+o.Snapshots+10)*o.MemoryMiB,
		filepath.Dir(o.kernel()), filepath.Dir(o.rootfs()))
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	d := &daemonSeries{label: label, ids: make([]string, o.N)}
	if d.log, err = os.Create(filepath.Join(dir, "daemon.log")); err != nil {
		return nil, err
	}
	d.cmd = exec.Command(o.Daemon, "--config", cfg)
	if netns != "" {
		d.cmd = exec.Command("nsenter", "--net="+netns, o.Daemon, "--config", cfg)
	}
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		d.log.Close()
		return nil, err
	}
	defer func() {
		if err != nil {
			d.close(ctx)
		}
	}()
	if d.conn, err = grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		return nil, err
	}
	d.sb = sandboxv1.NewSandboxServiceClient(d.conn)
	if err := waitServing(ctx, d.sb, d.cmd); err != nil {
		log, _ := os.ReadFile(d.log.Name())
		return nil, fmt.Errorf("%w\ndaemon log:\n%s", err, log)
	}
	// One event stream feeds per-id waiters; events may arrive before
	// Create returns, so outcomes are kept until claimed.
	sctx, cancel := context.WithCancel(ctx)
	d.cancel = cancel
	stream, err := d.sb.Events(sctx, &sandboxv1.EventsRequest{Actions: []string{"ready", "failed"}})
	if err != nil {
		return nil, err
	}
	d.w = newWaiters()
	go func() {
		for {
			ev, err := stream.Recv()
			if err != nil {
				d.w.fail(err)
				return
			}
			d.w.deliver(ev)
		}
	}()
	return d, nil
}

func (d *daemonSeries) name() string { return d.label }

func (d *daemonSeries) create(ctx context.Context, i int) error {
	resp, err := d.sb.Create(ctx, &sandboxv1.CreateRequest{Ttl: durationpb.New(0)})
	if err != nil {
		return err
	}
	d.ids[i] = resp.GetSandbox().GetId() // each index is written by one worker only
	return d.w.waitReady(ctx, d.ids[i])
}

// snapshots runs the checkpoint and restore series on the first sandbox.
func (d *daemonSeries) snapshots(ctx context.Context, o Options, r *Result) error {
	restored, err := runSnapshots(ctx, o, d.conn, d.w, d.ids[0], r)
	d.ids = append(d.ids, restored...)
	return err
}

// close removes every sandbox, ends the event stream and stops the daemon
// (SIGTERM; SIGKILL after 30 s).
func (d *daemonSeries) close(ctx context.Context) {
	if d.sb != nil {
		for _, id := range d.ids {
			if id != "" {
				_, _ = d.sb.Remove(context.WithoutCancel(ctx), &sandboxv1.RemoveRequest{Id: id, Force: true})
			}
		}
	}
	if d.cancel != nil {
		d.cancel()
	}
	if d.conn != nil {
		d.conn.Close()
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-done
	}
	d.log.Close()
}

// runSnapshots checkpoints sandbox id o.Snapshots times, then restores
// o.Snapshots sandboxes from the last checkpoint. It returns the restored
// sandboxes' ids.
func runSnapshots(ctx context.Context, o Options, conn *grpc.ClientConn, w *waiters, id string, r *Result) ([]string, error) {
	snaps := sandboxv1.NewSandboxSnapshotServiceClient(conn)
	o.logf("snapshots: %d checkpoints of one sandbox, %d restores, concurrency %d", o.Snapshots, o.Snapshots, o.Concurrency)
	var pauses, calls []time.Duration
	var last string
	start := time.Now()
	for i := range o.Snapshots {
		t0 := time.Now()
		resp, err := snaps.Checkpoint(ctx, &sandboxv1.CheckpointRequest{SandboxId: id, Name: fmt.Sprintf("bench-%d", i)})
		if err != nil {
			return nil, fmt.Errorf("checkpoint: %w", err)
		}
		calls = append(calls, time.Since(t0))
		pauses = append(pauses, resp.GetSnapshot().GetPauseDuration().AsDuration())
		last = resp.GetSnapshot().GetId()
	}
	wall := time.Since(start)
	r.Pause = Summarize("pause", pauses, wall)
	r.Checkpoint = Summarize("checkpoint", calls, wall)
	ids := make([]string, o.Snapshots)
	lat, rwall, err := parallel(ctx, o.Snapshots, o.Concurrency, func(ctx context.Context, i int) error {
		resp, err := snaps.Restore(ctx, &sandboxv1.RestoreRequest{SnapshotId: last})
		if err != nil {
			return err
		}
		ids[i] = resp.GetSandbox().GetId()
		return w.waitReady(ctx, ids[i])
	})
	r.Restore = Summarize("restore", lat, rwall)
	return ids, err
}

// networkConf is the [network] section body of a benchmark daemon.
func networkConf(netns string) string {
	if netns == "" {
		return "enabled = false"
	}
	return "enabled = true\nbridge = \"vmmbench0\"\ncidr = \"10.250.0.0/16\""
}

// waitServing polls List until the daemon answers (10 s at most).
func waitServing(ctx context.Context, sb sandboxv1.SandboxServiceClient, cmd *exec.Cmd) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := sb.List(cctx, &sandboxv1.ListRequest{})
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("daemon not serving after 10s: %w", err)
		}
		if cmd.ProcessState != nil {
			return errors.New("daemon exited")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wrapper writes a script that runs bin with env, so that the daemon's
// Firecracker processes get the same environment as the baseline's.
func wrapper(dir, bin string, env []string) (string, error) {
	if len(env) == 0 {
		return bin, nil
	}
	p := filepath.Join(dir, "firecracker-env")
	script := "#!/bin/sh\nexec env"
	for _, kv := range env {
		script += fmt.Sprintf(" %q", kv)
	}
	script += fmt.Sprintf(" %q \"$@\"\n", bin)
	return p, os.WriteFile(p, []byte(script), 0o755)
}
