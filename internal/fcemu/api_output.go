package fcemu

import (
	"fmt"
)

func (v *vmm) putLogger(body []byte) (*result, error) {
	var c struct {
		LogPath       *string `json:"log_path"`
		Level         *string `json:"level"`
		ShowLevel     *bool   `json:"show_level"`
		ShowLogOrigin *bool   `json:"show_log_origin"`
		Module        *string `json:"module"`
	}
	if err := decodeStrict(body, sLogger, &c); err != nil {
		return nil, jsonErr(err)
	}
	level := -1
	if c.Level != nil {
		l, okLevel := parseLevel(*c.Level)
		if !okLevel {
			return nil, jsonErr(&jsonError{msg: fmt.Sprintf("unknown variant `%s`, expected one of `Off`, `Trace`, `Debug`, `Info`, `Warn`, `Warning`, `Error`", *c.Level)})
		}
		level = l
	}
	if err := v.preBoot(false); err != nil {
		return nil, err
	}
	if c.LogPath != nil {
		if err := v.log.setPath(*c.LogPath); err != nil {
			return nil, badRequest("Logger error: Failed to open target file: %s", rustIOError(err))
		}
	}
	v.log.mu.Lock()
	if level >= 0 {
		v.log.level = level
	}
	if c.ShowLevel != nil {
		v.log.showLevel = *c.ShowLevel
	}
	if c.ShowLogOrigin != nil {
		v.log.showOrigin = *c.ShowLogOrigin
	}
	if c.Module != nil {
		v.log.module = *c.Module
	}
	v.log.mu.Unlock()
	return ok()
}

func (v *vmm) putMetrics(body []byte) (*result, error) {
	var c struct {
		MetricsPath string            `json:"metrics_path"`
		EmitID      bool              `json:"emit_id"`
		Properties  map[string]string `json:"properties"`
	}
	if err := decodeStrict(body, sMetrics, &c); err != nil {
		return nil, jsonErr(err)
	}
	if err := v.preBoot(false); err != nil {
		return nil, err
	}
	if err := v.configureMetrics(c.MetricsPath, c.EmitID, c.Properties); err != nil {
		return nil, err
	}
	return ok()
}

// configureMetrics opens the metrics file (once per process) and writes
// the first line.
func (v *vmm) configureMetrics(path string, emitID bool, props map[string]string) error {
	if v.met.configured() {
		return badRequest("Metrics error: Cannot initialize the metrics system due to bad user input: Reinitialization of metrics not allowed.")
	}
	f, err := openAppendless(path)
	if err != nil {
		return badRequest("Metrics error: Cannot initialize the metrics system due to bad user input: %s", rustIOError(err))
	}
	v.met.mu.Lock()
	v.met.file, v.met.emitID, v.met.properties = f, emitID, props
	v.met.mu.Unlock()
	v.met.flush()
	return nil
}

func (v *vmm) putSerial(body []byte) (*result, error) {
	var c struct {
		SerialOutPath *string `json:"serial_out_path"`
	}
	if err := decodeStrict(body, sSerial, &c); err != nil {
		return nil, jsonErr(err)
	}
	if err := v.preBoot(false); err != nil {
		return nil, err
	}
	if c.SerialOutPath != nil {
		f, err := openAppendless(*c.SerialOutPath)
		if err != nil {
			return nil, badRequest("Serial config error: %s", rustIOError(err))
		}
		if v.serialFile != nil {
			v.serialFile.Close()
		}
		v.serialFile, v.serialOut = f, f
	}
	return ok()
}
