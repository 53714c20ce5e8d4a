package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"time"
)

// Stats summarises one series of create→READY latencies.
type Stats struct {
	Name       string
	N          int
	P50        time.Duration
	P90        time.Duration
	P99        time.Duration
	Mean       time.Duration
	Max        time.Duration
	Wall       time.Duration
	Throughput float64 // sandboxes per second over the wall time
}

// Summarize computes Stats from raw latencies.
func Summarize(name string, lat []time.Duration, wall time.Duration) Stats {
	s := Stats{Name: name, N: len(lat), Wall: wall}
	if len(lat) == 0 {
		return s
	}
	sorted := slices.Clone(lat)
	slices.Sort(sorted)
	var sum time.Duration
	for _, d := range sorted {
		sum += d
	}
	s.Mean = sum / time.Duration(len(sorted))
	s.P50 = percentile(sorted, 50)
	s.P90 = percentile(sorted, 90)
	s.P99 = percentile(sorted, 99)
	s.Max = sorted[len(sorted)-1]
	if wall > 0 {
		s.Throughput = float64(len(sorted)) / wall.Seconds()
	}
	return s
}

// percentile uses the nearest-rank method on sorted data.
func percentile(sorted []time.Duration, p float64) time.Duration {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = max(rank, 1)
	return sorted[min(rank, len(sorted))-1]
}

// Result is a complete comparison.
type Result struct {
	Baseline Stats
	Daemon   Stats
	// Network is the daemon with networking (zero unless Options.Network).
	Network Stats
	// Pause is how long each checkpoint kept the sandbox paused, Checkpoint
	// the whole Checkpoint call, Restore the Restore call until the ready
	// event (zero unless Options.Snapshots).
	Pause, Checkpoint, Restore Stats
}

// Ratio returns daemon/baseline for a pair of figures.
func Ratio(daemon, baseline time.Duration) float64 {
	if baseline <= 0 {
		return math.NaN()
	}
	return float64(daemon) / float64(baseline)
}

// Fprint writes the result as a table with ratios.
func (r Result) Fprint(w io.Writer) {
	fmt.Fprintf(w, "%-12s %5s %10s %10s %10s %10s %10s %12s\n", "series", "n", "p50", "p90", "p99", "mean", "max", "throughput")
	series := []Stats{r.Baseline, r.Daemon}
	if r.Network.N > 0 {
		series = append(series, r.Network)
	}
	for _, s := range series {
		fmt.Fprintf(w, "%-12s %5d %10s %10s %10s %10s %10s %10.1f/s\n", s.Name, s.N,
			round(s.P50), round(s.P90), round(s.P99), round(s.Mean), round(s.Max), s.Throughput)
	}
	fmt.Fprintf(w, "ratio daemon/baseline: p50 %.2fx, p99 %.2fx, throughput %.2fx (daemon adds %+.0f%% at p50)\n",
		Ratio(r.Daemon.P50, r.Baseline.P50), Ratio(r.Daemon.P99, r.Baseline.P99),
		r.Daemon.Throughput/r.Baseline.Throughput, (Ratio(r.Daemon.P50, r.Baseline.P50)-1)*100)
	if r.Restore.N > 0 {
		fmt.Fprintf(w, "checkpoint: pause p50 %s p99 %s; whole checkpoint call p50 %s p99 %s (n=%d)\n",
			round(r.Pause.P50), round(r.Pause.P99), round(r.Checkpoint.P50), round(r.Checkpoint.P99), r.Checkpoint.N)
		fmt.Fprintf(w, "restore→READY: p50 %s p99 %s, %.1f/s (n=%d) vs create→READY p50 %s: %.2fx\n",
			round(r.Restore.P50), round(r.Restore.P99), r.Restore.Throughput, r.Restore.N, round(r.Daemon.P50),
			Ratio(r.Restore.P50, r.Daemon.P50))
	}
	if r.Network.N > 0 {
		fmt.Fprintf(w, "networking adds %s at p50 (%.2fx), %s at p99 (%.2fx) to the daemon's create→READY\n",
			round(r.Network.P50-r.Daemon.P50), Ratio(r.Network.P50, r.Daemon.P50),
			round(r.Network.P99-r.Daemon.P99), Ratio(r.Network.P99, r.Daemon.P99))
	}
}

func round(d time.Duration) string { return d.Round(10 * time.Microsecond).String() }
