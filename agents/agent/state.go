package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/metalfleet/metalfleet/agents/agent/file"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Files in StateDir.
const (
	credentialFile = "credential"
	desiredFile    = "desired.json"
	intentsFile    = "intents.json"
)

// state is what an agent keeps on local disk between runs.
type state struct {
	dir        string
	credential string
	desired    *agentv1.Desired
	factsDone  uint64
}

type intents struct {
	ReportFactsGeneration uint64 `json:"report_facts_generation"`
}

func openState(dir string) (*state, error) {
	s := &state{dir: dir}
	if dir == "" {
		return s, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, credentialFile)); err == nil {
		s.credential = strings.TrimSpace(string(b))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read credential: %w", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, desiredFile)); err == nil {
		d := &agentv1.Desired{}
		// A damaged cache is no reason not to start: central sends the
		// document again on connect.
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, d); err == nil {
			s.desired = d
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read desired document: %w", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, intentsFile)); err == nil {
		var in intents
		if json.Unmarshal(b, &in) == nil {
			s.factsDone = in.ReportFactsGeneration
		}
	}
	return s, nil
}

func (s *state) saveCredential(tok string) error {
	s.credential = tok
	return s.write(credentialFile, []byte(tok+"\n"))
}

func (s *state) saveDesired(d *agentv1.Desired) error {
	s.desired = d
	b, err := protojson.Marshal(d)
	if err != nil {
		return fmt.Errorf("encode desired document: %w", err)
	}
	return s.write(desiredFile, b)
}

func (s *state) saveFactsDone(gen uint64) error {
	s.factsDone = gen
	b, _ := json.Marshal(intents{ReportFactsGeneration: gen})
	return s.write(intentsFile, b)
}

// write replaces a file atomically and durably: a crash leaves the old or
// the new content, never a torn one.
func (s *state) write(name string, b []byte) error {
	if s.dir == "" {
		return nil
	}
	return file.WriteAtomic(filepath.Join(s.dir, name), b, 0o600)
}
