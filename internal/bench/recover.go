package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// RecoverResult compares restarts of a daemon that left N sandboxes running
// with restarts of one that has none, measured in the same run.
type RecoverResult struct {
	// N is the number of sandboxes left running across each restart.
	N int
	// Empty and Loaded are the times from the daemon's process start to its
	// first successful List, one sample per round: with no sandbox, and
	// with N sandboxes to re-adopt.
	Empty, Loaded Stats
	// Listed and Ready are the fewest sandboxes, and READY ones, that the
	// first successful List of a loaded restart showed.
	Listed, Ready int
	// Create is create→READY of the N sandboxes before the first restart.
	Create Stats
}

// Fprint writes the result with the ratio to the baseline.
func (r RecoverResult) Fprint(w io.Writer) {
	fmt.Fprintf(w, "%-14s %6s %10s %10s %10s\n", "restart", "rounds", "p50", "mean", "max")
	for _, s := range []Stats{r.Empty, r.Loaded} {
		fmt.Fprintf(w, "%-14s %6d %10s %10s %10s\n", s.Name, s.N, round(s.P50), round(s.Mean), round(s.Max))
	}
	perVMM := time.Duration(0)
	if r.N > 0 {
		perVMM = (r.Loaded.P50 - r.Empty.P50) / time.Duration(r.N)
	}
	fmt.Fprintf(w, "ratio %d adopted/empty: p50 %.2fx; re-adopting costs %s per sandbox (p50); first List showed %d sandboxes, %d READY (of %d)\n",
		r.N, Ratio(r.Loaded.P50, r.Empty.P50), round(perVMM), r.Listed, r.Ready, r.N)
	fmt.Fprintf(w, "(the %d sandboxes were created at %.1f/s, create→READY p50 %s)\n", r.Create.N, r.Create.Throughput, round(r.Create.P50))
}

// RunRecover measures how long a restarted daemon takes to serve: the time
// from its process start to the first successful List (retried while it
// refuses or does not listen yet), with o.N sandboxes left running by an
// on_shutdown = "leave" shutdown, against the same daemon configuration
// with no sandbox. Each of rounds rounds restarts both daemons, in rotating
// order. Networking is off. Every VMM is removed at the end, whatever
// failed: through the daemon, and then by killing any VMM process still
// working under o.Dir.
func RunRecover(ctx context.Context, o Options, rounds int) (_ RecoverResult, err error) {
	if o.N <= 0 || o.Concurrency <= 0 || rounds <= 0 {
		return RecoverResult{}, errors.New("bench: N, Concurrency and rounds must be > 0")
	}
	if o.Dir == "" {
		dir, err := os.MkdirTemp("/tmp", "vmm-bench-")
		if err != nil {
			return RecoverResult{}, err
		}
		defer os.RemoveAll(dir)
		o.Dir = dir
	}
	defer func() { err = errors.Join(err, sweepVMMs(ctx, o)) }()
	if err := prepareImages(o); err != nil {
		return RecoverResult{}, err
	}
	empty, err := newLeaver(o, "empty")
	if err != nil {
		return RecoverResult{}, err
	}
	loaded, err := newLeaver(o, fmt.Sprintf("%d-adopted", o.N))
	if err != nil {
		return RecoverResult{}, err
	}
	defer func() { err = errors.Join(err, loaded.removeAll(ctx, o.Concurrency), loaded.stop(), empty.stop()) }()
	for _, d := range []*leaver{empty, loaded} {
		if _, _, err := d.start(ctx); err != nil {
			return RecoverResult{}, fmt.Errorf("%s: %w", d.label, err)
		}
	}
	r := RecoverResult{N: o.N, Listed: o.N, Ready: o.N}
	o.logf("recover: creating %d sandboxes, concurrency %d", o.N, o.Concurrency)
	if r.Create, err = loaded.createAll(ctx, o); err != nil {
		return RecoverResult{}, err
	}
	var lat [2][]time.Duration
	for rd := range rounds {
		for k := range 2 {
			idx := (rd + k) % 2
			d := []*leaver{empty, loaded}[idx]
			if err := d.stop(); err != nil {
				return RecoverResult{}, fmt.Errorf("%s: %w", d.label, err)
			}
			took, list, err := d.start(ctx)
			if err != nil {
				return RecoverResult{}, fmt.Errorf("%s, round %d: %w", d.label, rd+1, err)
			}
			lat[idx] = append(lat[idx], took)
			if d == loaded {
				nReady := 0
				for _, sb := range list.GetSandboxes() {
					if sb.GetState() == sandboxv1.SandboxState_SANDBOX_STATE_READY {
						nReady++
					}
				}
				r.Listed, r.Ready = min(r.Listed, len(list.GetSandboxes())), min(r.Ready, nReady)
			}
			o.logf("recover: round %d: %s served after %s", rd+1, d.label, round(took))
		}
	}
	r.Empty = Summarize(empty.label, lat[0], 0)
	r.Loaded = Summarize(loaded.label, lat[1], 0)
	if r.Listed != o.N {
		return r, fmt.Errorf("a restart's first List showed %d sandboxes, want %d", r.Listed, o.N)
	}
	return r, nil
}

// leaver is a vmm-daemon that leaves its sandboxes running when it stops
// (on_shutdown = "leave"), restarted on the same data dir.
type leaver struct {
	label, daemon, config, sock, logPath string
	cmd                                  *exec.Cmd
	exited                               chan struct{}
	conn                                 *grpc.ClientConn
	sb                                   sandboxv1.SandboxServiceClient
}

func newLeaver(o Options, label string) (*leaver, error) {
	dir := filepath.Join(o.Dir, "recover-"+label)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	fc, err := wrapper(dir, o.Firecracker, o.Env)
	if err != nil {
		return nil, err
	}
	d := &leaver{label: label, daemon: o.Daemon, config: filepath.Join(dir, "config.toml"),
		sock: filepath.Join(dir, "vmm.sock"), logPath: filepath.Join(dir, "daemon.log")}
	sections := []string{
		fmt.Sprintf("[firecracker]\nbinary = %q\ndata_dir = %q\nlog_level = \"Warning\"", fc, filepath.Join(dir, "data")),
		fmt.Sprintf("[grpc]\nunix_socket = %q", d.sock),
		"[network]\nenabled = false",
		fmt.Sprintf("[defaults]\nvcpus = %d\nmemory_mib = %d\nkernel = %q\nrootfs = %q\nboot_args = %q",
			o.VCPUs, o.MemoryMiB, o.kernel(), o.rootfs(), bootArgs),
		// Emulated guests use no host memory or CPU of their own: the
		// host budget is sized to what the benchmark creates.
		fmt.Sprintf("[limits]\nmax_sandboxes = %d\nmax_total_vcpus = %d\nmax_total_memory_mib = %d\nallowed_dirs = [%q, %q]",
			o.N+10, (o.N+10)*o.VCPUs, (o.N+10)*o.MemoryMiB, filepath.Dir(o.kernel()), filepath.Dir(o.rootfs())),
		"[daemon]\nlog_level = \"warn\"\non_shutdown = \"leave\"",
	}
	return d, os.WriteFile(d.config, []byte(strings.Join(sections, "\n\n")+"\n"), 0o600)
}

// start starts the daemon and returns the time from its process start to
// the first successful List, and that List's answer.
func (d *leaver) start(ctx context.Context) (time.Duration, *sandboxv1.ListResponse, error) {
	logf, err := os.OpenFile(d.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, nil, err
	}
	defer logf.Close() // the child has its own descriptor
	// A connection that redials at once: gRPC's default backoff (a second
	// and more) would be measured instead of the daemon.
	d.conn, err = grpc.NewClient("unix://"+d.sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 2 * time.Millisecond, Multiplier: 1, MaxDelay: 2 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		return 0, nil, err
	}
	d.sb = sandboxv1.NewSandboxServiceClient(d.conn)
	d.cmd = exec.Command(d.daemon, "--config", d.config)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	t0 := time.Now()
	if err := d.cmd.Start(); err != nil {
		d.cmd = nil
		return 0, nil, err
	}
	d.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) { _ = cmd.Wait(); close(exited) }(d.cmd, d.exited)
	deadline := t0.Add(10 * time.Minute)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		list, err := d.sb.List(cctx, &sandboxv1.ListRequest{})
		cancel()
		if err == nil {
			return time.Since(t0), list, nil
		}
		select {
		case <-d.exited:
			return 0, nil, fmt.Errorf("the daemon exited during start-up (%v); its log: %s", d.cmd.ProcessState, d.logPath)
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			return 0, nil, fmt.Errorf("the daemon does not serve %v after its start: %w", time.Since(t0).Round(time.Second), err)
		}
		time.Sleep(time.Millisecond)
	}
}

// stop sends SIGTERM (SIGKILL after a minute) and waits for the exit. A
// daemon not running is left alone.
func (d *leaver) stop() error {
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
	}
	if d.cmd == nil {
		return nil
	}
	cmd := d.cmd
	d.cmd = nil
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(time.Minute):
		_ = cmd.Process.Kill()
		<-d.exited
		return fmt.Errorf("%s: the daemon did not stop within a minute of SIGTERM; its log: %s", d.label, d.logPath)
	}
	if !cmd.ProcessState.Success() {
		return fmt.Errorf("%s: the daemon exited with %v; its log: %s", d.label, cmd.ProcessState, d.logPath)
	}
	return nil
}

// createAll creates o.N sandboxes and waits until all are READY.
func (d *leaver) createAll(ctx context.Context, o Options) (Stats, error) {
	lat, wall, err := parallel(ctx, o.N, o.Concurrency, func(ctx context.Context, i int) error {
		r, err := d.sb.Create(ctx, &sandboxv1.CreateRequest{})
		if err != nil {
			return err
		}
		for {
			got, err := d.sb.Inspect(ctx, &sandboxv1.InspectRequest{Id: r.GetSandbox().GetId()})
			if err != nil {
				return err
			}
			switch got.GetSandbox().GetState() {
			case sandboxv1.SandboxState_SANDBOX_STATE_READY:
				return nil
			case sandboxv1.SandboxState_SANDBOX_STATE_STARTING:
				time.Sleep(2 * time.Millisecond)
			default:
				return fmt.Errorf("sandbox %s: %v (%s)", got.GetSandbox().GetId(), got.GetSandbox().GetState(), got.GetSandbox().GetFailureReason())
			}
		}
	})
	return Summarize("create", lat, wall), err
}

// removeAll force-removes every sandbox of a running daemon.
func (d *leaver) removeAll(ctx context.Context, concurrency int) error {
	if d.cmd == nil {
		return nil
	}
	ctx = context.WithoutCancel(ctx)
	list, err := d.sb.List(ctx, &sandboxv1.ListRequest{})
	if err != nil {
		return fmt.Errorf("%s: listing the sandboxes to remove: %w", d.label, err)
	}
	sbs := list.GetSandboxes()
	_, _, err = parallel(ctx, len(sbs), concurrency, func(ctx context.Context, i int) error {
		_, err := d.sb.Remove(ctx, &sandboxv1.RemoveRequest{Id: sbs[i].GetId(), Force: true})
		return err
	})
	return err
}

// sweepVMMs kills every VMM process still working under o.Dir (there is
// none unless a daemon failed to remove its sandboxes) and reports them.
func sweepVMMs(ctx context.Context, o Options) error {
	killed, err := vmm.KillStrays(context.WithoutCancel(ctx), func(_ int, cwd string) bool {
		return strings.HasPrefix(cwd, o.Dir+string(os.PathSeparator))
	}, nil)
	if err == nil && len(killed) > 0 {
		err = fmt.Errorf("killed %d VMM processes the daemons left", len(killed))
	}
	return err
}
