package sonicemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"time"
)

// LLDPCli is the NeighbourSource of a switch running lldpd: it reads
// `lldpcli -f json0 show neighbors details` and follows `lldpcli -f json0
// watch` for changes, as SONiC's lldp_syncd reads lldpd.
type LLDPCli struct {
	// Path is lldpcli (default "lldpcli").
	Path string
	// Socket is lldpd's control socket (default lldpd's own,
	// /run/lldpd.socket).
	Socket string
	Log    *slog.Logger
}

func (l *LLDPCli) command(ctx context.Context, args ...string) *exec.Cmd {
	path := l.Path
	if path == "" {
		path = "lldpcli"
	}
	full := []string{path}
	if l.Socket != "" {
		full = append(full, "-u", l.Socket)
	}
	full = append(full, "-f", "json0")
	// lldpcli talks to lldpd's socket only: the namespace lldpd runs in
	// does not matter here.
	full = append(full, args...)
	return exec.CommandContext(ctx, full[0], full[1:]...)
}

// Neighbours asks lldpd for the neighbours.
func (l *LLDPCli) Neighbours(ctx context.Context) (map[string]Neighbour, error) {
	cmd := l.command(ctx, "show", "neighbors", "details")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("lldpcli show neighbors: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return ParseLLDP(out)
}

// Watch runs `lldpcli watch` (again after a pause when it ends: lldpd
// restarted) and wakes on every event it prints.
func (l *LLDPCli) Watch(ctx context.Context) (<-chan struct{}, error) {
	out := make(chan struct{}, 1)
	go func() {
		defer close(out)
		pause := time.Second
		for ctx.Err() == nil {
			start := time.Now()
			err := l.watchOnce(ctx, out)
			if ctx.Err() != nil {
				return
			}
			if time.Since(start) > time.Minute {
				pause = time.Second
			}
			l.log().Warn("lldpcli watch ended", "err", err, "again in", pause)
			select {
			case <-ctx.Done():
				return
			case <-time.After(pause):
			}
			pause = min(2*pause, 30*time.Second)
			// lldpd may have come back: read everything again.
			select {
			case out <- struct{}{}:
			default:
			}
		}
	}()
	return out, nil
}

func (l *LLDPCli) watchOnce(ctx context.Context, out chan<- struct{}) error {
	cmd := l.command(ctx, "watch")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		// Each event is a JSON object whose key is lldp-added,
		// lldp-updated or lldp-deleted; what it holds is read again with
		// show neighbors, which is the whole truth.
		if strings.Contains(sc.Text(), `"lldp-`) {
			select {
			case out <- struct{}{}:
			default:
			}
		}
	}
	err = cmd.Wait()
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func (l *LLDPCli) log() *slog.Logger {
	if l.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l.Log
}

// lldpJSON is lldpcli's json0 output: every object a list, every value
// {"value": …} (json0 keeps that shape however many there are, unlike
// -f json).
type lldpJSON struct {
	LLDP []struct {
		Interface []struct {
			Name    string `json:"name"`
			Chassis []struct {
				ID    []typedValue `json:"id"`
				Name  []typedValue `json:"name"`
				Descr []typedValue `json:"descr"`
				Mgmt  []typedValue `json:"mgmt-ip"`
			} `json:"chassis"`
			Port []struct {
				ID    []typedValue `json:"id"`
				Descr []typedValue `json:"descr"`
			} `json:"port"`
		} `json:"interface"`
	} `json:"lldp"`
}

type typedValue struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

func first(v []typedValue) typedValue {
	if len(v) == 0 {
		return typedValue{}
	}
	return v[0]
}

// The LLDP MIB's subtype numbers (LldpChassisIdSubtype, LldpPortIdSubtype)
// of lldpcli's type names, as lldp_syncd writes them.
var (
	chassisSubtype = map[string]string{"ifalias": "2", "mac": "4", "ip": "5", "ifname": "6", "local": "7"}
	portSubtype    = map[string]string{"ifalias": "1", "mac": "3", "ip": "4", "ifname": "5", "local": "7"}
)

// ParseLLDP reads `lldpcli -f json0 show neighbors details`. When a port
// has several neighbours, the first is kept (lldp_syncd keeps one row per
// port too).
func ParseLLDP(b []byte) (map[string]Neighbour, error) {
	var j lldpJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("lldpcli json: %w", err)
	}
	out := map[string]Neighbour{}
	for _, l := range j.LLDP {
		for _, i := range l.Interface {
			if i.Name == "" || len(i.Chassis) == 0 {
				continue
			}
			if _, ok := out[i.Name]; ok {
				continue
			}
			c := i.Chassis[0]
			n := Neighbour{
				ChassisID: first(c.ID).Value, ChassisIDSubtype: chassisSubtype[first(c.ID).Type],
				SysName: first(c.Name).Value, SysDesc: first(c.Descr).Value, MgmtAddr: first(c.Mgmt).Value,
			}
			if len(i.Port) > 0 {
				p := i.Port[0]
				n.PortID, n.PortIDSubtype = first(p.ID).Value, portSubtype[first(p.ID).Type]
				n.PortDesc = first(p.Descr).Value
			}
			out[i.Name] = n
		}
	}
	return out, nil
}
