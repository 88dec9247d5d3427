package facts

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// readCPUs groups /proc/cpuinfo's logical CPUs by physical package.
func readCPUs(path string) ([]*agentv1.CPUFact, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, errPath(path, err)
	}
	cpus, err := parseCPUInfo(b)
	if err != nil {
		return nil, errPath(path, err)
	}
	return cpus, nil
}

func parseCPUInfo(b []byte) ([]*agentv1.CPUFact, error) {
	type pkg struct {
		id int
		agentv1.CPUFact
	}
	pkgs := map[int]*pkg{}
	var cur map[string]string
	logical := 0
	flush := func() error {
		if cur == nil {
			return nil
		}
		defer func() { cur = nil }()
		if _, ok := cur["processor"]; !ok {
			return errors.New("cpuinfo block without a processor line")
		}
		logical++
		// Virtual machines and single-socket kernels may leave out the
		// physical id; they have one package.
		id := 0
		if s, ok := cur["physical id"]; ok {
			n, err := strconv.Atoi(s)
			if err != nil {
				return fmt.Errorf("bad physical id %q", s)
			}
			id = n
		}
		p := pkgs[id]
		if p == nil {
			p = &pkg{id: id}
			p.Vendor = cur["vendor_id"]
			p.Model = cur["model name"]
			if p.Vendor == "" {
				p.Vendor = cur["CPU implementer"]
			}
			pkgs[id] = p
		}
		p.Threads++
		return nil
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("malformed line %q", line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if k == "processor" {
			if _, err := strconv.Atoi(v); err != nil {
				// Non-x86 kernels print a "Processor : <name>" header line;
				// only numbered entries are logical CPUs.
				if cur == nil {
					continue
				}
				return nil, fmt.Errorf("bad processor number %q", v)
			}
			if err := flush(); err != nil {
				return nil, err
			}
		}
		if cur == nil {
			if k != "processor" {
				// Lines outside a processor block (ARM's trailer:
				// Hardware, Revision, Serial) are not CPUs.
				continue
			}
			cur = map[string]string{}
		}
		cur[k] = v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if logical == 0 {
		return nil, errors.New("no processors")
	}
	ids := make([]int, 0, len(pkgs))
	for id := range pkgs {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	out := make([]*agentv1.CPUFact, 0, len(ids))
	for _, id := range ids {
		p := pkgs[id]
		out = append(out, &agentv1.CPUFact{Vendor: p.Vendor, Model: p.Model, Threads: p.Threads})
	}
	return out, nil
}

// readMemTotal returns MemTotal from /proc/meminfo in bytes.
func readMemTotal(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, errPath(path, err)
	}
	n, err := parseMemTotal(b)
	if err != nil {
		return 0, errPath(path, err)
	}
	return n, nil
}

func parseMemTotal(b []byte) (uint64, error) {
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(k) != "MemTotal" {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 || len(fields) > 2 {
			return 0, fmt.Errorf("malformed MemTotal %q", strings.TrimSpace(v))
		}
		n, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("malformed MemTotal %q: %w", strings.TrimSpace(v), err)
		}
		mult := uint64(1)
		if len(fields) == 2 {
			switch strings.ToLower(fields[1]) {
			case "kb":
				mult = 1024
			default:
				return 0, fmt.Errorf("unknown MemTotal unit %q", fields[1])
			}
		}
		if n == 0 {
			return 0, errors.New("MemTotal is 0")
		}
		if n > (1<<64-1)/mult {
			return 0, fmt.Errorf("MemTotal %d %s overflows", n, fields[1])
		}
		return n * mult, nil
	}
	return 0, errors.New("no MemTotal line")
}
