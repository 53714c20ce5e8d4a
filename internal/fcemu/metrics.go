package fcemu

import (
	"bytes"
	"encoding/json"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"
)

// metricGroups are the groups every Firecracker metrics line carries (zeros
// when nothing happened), with a representative set of counters each.
var metricGroups = []struct {
	name string
	keys []string
}{
	{"api_server", []string{"process_startup_time_us", "process_startup_time_cpu_us"}},
	{"balloon", []string{"activate_fails", "inflate_count", "stats_updates_count", "stats_update_fails", "deflate_count", "event_fails"}},
	{"block", []string{"activate_fails", "cfg_fails", "no_avail_buffer", "event_fails", "execute_fails", "invalid_reqs_count", "flush_count", "queue_event_count", "rate_limiter_event_count", "update_count", "update_fails", "read_bytes", "write_bytes", "read_count", "write_count", "rate_limiter_throttled_events", "io_engine_throttled_events"}},
	{"deprecated_api", []string{"deprecated_http_api_calls", "deprecated_cmd_line_api_calls"}},
	{"entropy", []string{"activate_fails", "entropy_event_fails", "entropy_event_count", "entropy_bytes", "host_rng_fails", "entropy_rate_limiter_throttled", "rate_limiter_event_count"}},
	{"get_api_requests", []string{"instance_info_count", "machine_cfg_count", "mmds_count", "vmm_version_count"}},
	{"i8042", []string{"error_count", "missed_read_count", "missed_write_count", "read_count", "reset_count", "write_count"}},
	{"latencies_us", []string{"full_create_snapshot", "diff_create_snapshot", "load_snapshot", "pause_vm", "resume_vm", "vmm_full_create_snapshot", "vmm_diff_create_snapshot", "vmm_load_snapshot", "vmm_pause_vm", "vmm_resume_vm"}},
	{"logger", []string{"missed_metrics_count", "metrics_fails", "missed_log_count", "log_fails"}},
	{"mmds", []string{"rx_accepted", "rx_accepted_err", "rx_accepted_unusual", "rx_bad_eth", "rx_count", "tx_bytes", "tx_count", "tx_errors", "tx_frames", "connections_created", "connections_destroyed"}},
	{"net", []string{"activate_fails", "cfg_fails", "mac_address_updates", "no_rx_avail_buffer", "no_tx_avail_buffer", "event_fails", "rx_queue_event_count", "rx_event_rate_limiter_count", "rx_tap_event_count", "rx_bytes_count", "rx_packets_count", "rx_fails", "rx_count", "tap_read_fails", "tap_write_fails", "tx_bytes_count", "tx_malformed_frames", "tx_fails", "tx_count", "tx_packets_count", "tx_queue_event_count", "tx_rate_limiter_event_count"}},
	{"patch_api_requests", []string{"drive_count", "drive_fails", "network_count", "network_fails", "machine_cfg_count", "machine_cfg_fails", "mmds_count", "mmds_fails"}},
	{"put_api_requests", []string{"actions_count", "actions_fails", "boot_source_count", "boot_source_fails", "drive_count", "drive_fails", "logger_count", "logger_fails", "machine_cfg_count", "machine_cfg_fails", "cpu_cfg_count", "cpu_cfg_fails", "metrics_count", "metrics_fails", "network_count", "network_fails", "mmds_count", "mmds_fails", "vsock_count", "vsock_fails", "pmem_count", "pmem_fails", "serial_count", "serial_fails", "hotplug_memory_count", "hotplug_memory_fails"}},
	{"seccomp", []string{"num_faults"}},
	{"signals", []string{"sigbus", "sigsegv", "sigxfsz", "sigxcpu", "sigpipe", "sighup", "sigill"}},
	{"uart", []string{"error_count", "flush_count", "missed_read_count", "missed_write_count", "read_count", "write_count", "rate_limiter_dropped_bytes"}},
	{"vcpu", []string{"exit_io_in", "exit_io_out", "exit_mmio_read", "exit_mmio_write", "failures", "kvmclock_ctrl_fails"}},
	{"vmm", []string{"panic_count"}},
	{"vsock", []string{"activate_fails", "cfg_fails", "rx_queue_event_fails", "tx_queue_event_fails", "ev_queue_event_fails", "muxer_event_fails", "conn_event_fails", "rx_queue_event_count", "tx_queue_event_count", "rx_bytes_count", "tx_bytes_count", "rx_packets_count", "tx_packets_count", "conns_added", "conns_killed", "conns_removed", "killq_resync", "tx_flush_fails", "tx_write_fails", "rx_read_fails"}},
}

// metrics accumulates counters and writes them as one JSON object per line.
// Counters are deltas since the previous flush, like Firecracker's.
type metrics struct {
	// mu guards the fields that follow.
	mu         sync.Mutex
	file       *os.File
	id         string
	emitID     bool
	properties map[string]string
	counters   map[string]map[string]uint64
}

func newMetrics(id string) *metrics {
	return &metrics{id: id, counters: map[string]map[string]uint64{}}
}

func (m *metrics) configured() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.file != nil
}

func (m *metrics) add(group, key string, n uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g := m.counters[group]
	if g == nil {
		g = map[string]uint64{}
		m.counters[group] = g
	}
	g[key] += n
}

// flush writes one line when a destination is configured.
func (m *metrics) flush() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.file == nil {
		return
	}
	var b bytes.Buffer
	b.WriteString(`{"utc_timestamp_ms":`)
	b.WriteString(strconv.FormatInt(time.Now().UnixMilli(), 10))
	if m.emitID {
		id, _ := json.Marshal(m.id)
		b.WriteString(`,"id":`)
		b.Write(id)
	}
	if len(m.properties) > 0 {
		p, _ := json.Marshal(m.properties)
		b.WriteString(`,"properties":`)
		b.Write(p)
	}
	for _, g := range metricGroups {
		vals := map[string]uint64{}
		for _, k := range g.keys {
			vals[k] = 0
		}
		for k, v := range m.counters[g.name] {
			vals[k] = v
		}
		keys := make([]string, 0, len(vals))
		for k := range vals {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b.WriteString(`,"` + g.name + `":{`)
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(`"` + k + `":` + strconv.FormatUint(vals[k], 10))
		}
		b.WriteByte('}')
	}
	b.WriteString("}\n")
	m.counters = map[string]map[string]uint64{}
	_, _ = m.file.Write(b.Bytes())
}
