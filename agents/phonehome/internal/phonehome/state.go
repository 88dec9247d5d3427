package phonehome

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/metalfleet/metalfleet/agents/agent/file"
)

// stateFile is the phone-home's own file in the state directory it shares
// with the agent runtime (credential, desired.json, intents.json).
const stateFile = "phonehome.json"

// maxRemembered bounds the allocation ids kept: an id only has to be
// recognised until the next allocation replaces it.
const maxRemembered = 16

// state is what must survive a restart of the phone-home.
type state struct {
	// PhonedHome are the allocation ids "Phoned Home" was sent for,
	// newest last.
	PhonedHome []string `json:"phoned_home,omitempty"`
	// RebootGeneration is the reboot generation executed last, or the
	// baseline: nil until the first machine document (or the install
	// record) set one.
	RebootGeneration *uint64 `json:"reboot_generation,omitempty"`
}

func (s *state) phonedHome(id string) bool { return slices.Contains(s.PhonedHome, id) }

func (s *state) addPhonedHome(id string) {
	if s.phonedHome(id) {
		return
	}
	s.PhonedHome = append(s.PhonedHome, id)
	if n := len(s.PhonedHome); n > maxRemembered {
		s.PhonedHome = slices.Clone(s.PhonedHome[n-maxRemembered:])
	}
}

// errDamagedState comes with a fresh state: the caller logs it and goes on.
var errDamagedState = errors.New("state file damaged, starting over")

// loadState reads the state; with errDamagedState it also returns a usable
// (fresh) state.
func loadState(dir string) (*state, error) {
	s := &state{}
	if dir == "" {
		return s, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	// A damaged file must not make the machine reboot: starting over
	// takes the next document's generation as the baseline again.
	if err := json.Unmarshal(b, s); err != nil {
		return &state{}, fmt.Errorf("%w: %s: %v", errDamagedState, filepath.Join(dir, stateFile), err)
	}
	return s, nil
}

// save replaces the file atomically and durably: a reboot follows some
// saves immediately.
func (s *state) save(dir string) error {
	if dir == "" {
		return nil
	}
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	if err := file.WriteAtomic(filepath.Join(dir, stateFile), b, 0o600); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}
