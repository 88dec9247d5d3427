// Package journal records which generation of which intent metal-bmc
// started and finished, durably, so that an intent runs once per
// generation also when metal-bmc dies in the middle of it: "started gen N"
// is fsync'd before the BMC is asked, "done gen N" after it answered.
//
// The file is a log of JSON lines, one entry per line, appended and
// fsync'd. Open replays it (a torn last line from a crash is ignored: its
// write never returned, so nothing was done after it) and rewrites it
// compacted, one line per intent, atomically.
package journal

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/metalfleet/metalfleet/agents/agent/file"
)

// Phase of an intent's generation.
type Phase string

// Phases: started is written before the action, done after it.
const (
	Started Phase = "started"
	Done    Phase = "done"
)

// Key names one intent: a machine and a kind ("power", "boot", ...).
type Key struct {
	Machine string `json:"machine"`
	Kind    string `json:"kind"`
}

// Record is the newest generation of one intent the journal knows.
type Record struct {
	Generation uint64 `json:"generation"`
	Phase      Phase  `json:"phase"`
	// Outcome and Message are the result of a done generation, in the
	// words of the caller ("succeeded", "failed", "interrupted").
	Outcome string    `json:"outcome,omitempty"`
	Message string    `json:"message,omitempty"`
	Time    time.Time `json:"time"`
}

type line struct {
	Key
	Record
}

// compactAfter is how many appended lines make the journal rewrite itself.
const compactAfter = 4096

// maxLine bounds one line when reading; longer ones are damage.
const maxLine = 64 << 10

// Journal is the on-disk record of intents. Its methods are safe for
// concurrent use.
type Journal struct {
	mu       sync.Mutex
	path     string
	f        *os.File
	records  map[Key]Record
	appended int
	now      func() time.Time
}

// Open replays the journal at path (a missing file is an empty journal)
// and opens it for appending. Lines that do not parse are skipped: only a
// crash mid-write makes them, and the write that made one never returned.
func Open(path string) (*Journal, error) {
	j := &Journal{path: path, records: map[Key]Record{}, now: time.Now}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("journal: %w", err)
	}
	// Split rather than a Scanner: one overlong line must not hide the
	// lines after it (compaction would then drop them).
	for _, raw := range bytes.Split(b, []byte{'\n'}) {
		var l line
		if len(raw) > maxLine || json.Unmarshal(raw, &l) != nil || l.Machine == "" || l.Kind == "" || (l.Phase != Started && l.Phase != Done) {
			continue
		}
		// A generation never goes back: a line older than the newest
		// known (only a hand-edited file has one) is ignored.
		if cur, ok := j.records[l.Key]; ok && l.Generation < cur.Generation {
			continue
		}
		j.records[l.Key] = l.Record
	}
	if err := j.compactLocked(); err != nil {
		return nil, err
	}
	return j, nil
}

// compactLocked rewrites the file with one line per intent and reopens it
// for appending.
func (j *Journal) compactLocked() error {
	keys := make([]Key, 0, len(j.records))
	for k := range j.records {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(a, b int) bool {
		if keys[a].Machine != keys[b].Machine {
			return keys[a].Machine < keys[b].Machine
		}
		return keys[a].Kind < keys[b].Kind
	})
	var buf bytes.Buffer
	for _, k := range keys {
		b, err := json.Marshal(line{Key: k, Record: j.records[k]})
		if err != nil {
			return fmt.Errorf("journal: %w", err)
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	if j.f != nil {
		j.f.Close()
		j.f = nil
	}
	if err := file.WriteAtomic(j.path, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	j.f, j.appended = f, 0
	return nil
}

// Get returns the newest record of k.
func (j *Journal) Get(k Key) (Record, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	r, ok := j.records[k]
	return r, ok
}

// All returns every record.
func (j *Journal) All() map[Key]Record {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make(map[Key]Record, len(j.records))
	for k, r := range j.records {
		out[k] = r
	}
	return out
}

// Start records, durably, that generation gen of k is about to run. It
// returns only after the line is on disk; the caller must not act on an
// error.
func (j *Journal) Start(k Key, gen uint64) error {
	return j.write(k, Record{Generation: gen, Phase: Started})
}

// Finish records, durably, the outcome of generation gen of k.
func (j *Journal) Finish(k Key, gen uint64, outcome, message string) error {
	return j.write(k, Record{Generation: gen, Phase: Done, Outcome: outcome, Message: message})
}

func (j *Journal) write(k Key, r Record) error {
	if k.Machine == "" || k.Kind == "" {
		return errors.New("journal: empty key")
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return errors.New("journal: closed")
	}
	if cur, ok := j.records[k]; ok && r.Generation < cur.Generation {
		return fmt.Errorf("journal: %s/%s generation %d is older than the recorded %d", k.Machine, k.Kind, r.Generation, cur.Generation)
	}
	r.Time = j.now().UTC()
	b, err := json.Marshal(line{Key: k, Record: r})
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if _, err := j.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("journal: write: %w", err)
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("journal: fsync: %w", err)
	}
	j.records[k] = r
	if j.appended++; j.appended >= compactAfter {
		return j.compactLocked()
	}
	return nil
}

// Close closes the file.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return nil
	}
	err := j.f.Close()
	j.f = nil
	return err
}
