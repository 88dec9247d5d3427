package machine

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/fsm"
)

// Event is one entry of a machine's event log.
type Event struct {
	Machine string
	// Type is a lifecycle event of fsm ("Phoned Home", ...) or a note
	// outside the state machine ("Allocated", "Reinstall", "State", ...).
	Type    string
	Message string
}

// Record stores events in their machines' logs, in order: lifecycle
// events run through the state machine and move the machine's state;
// other events are logged with the state unchanged, all of them in one
// statement. The machine rows must be locked. One call records one event
// or a batch's worth.
func Record(ctx context.Context, tx pgx.Tx, evs ...Event) error {
	var notes []Event
	flush := func() error {
		if len(notes) == 0 {
			return nil
		}
		err := logNotes(ctx, tx, notes)
		notes = notes[:0]
		return err
	}
	for _, e := range evs {
		if _, ok := fsm.Parse(e.Type); !ok {
			notes = append(notes, e)
			continue
		}
		if err := flush(); err != nil {
			return err
		}
		if err := transition(ctx, tx, e); err != nil {
			return err
		}
	}
	return flush()
}

// NoteIfKnown logs a note outside the state machine (metal-bmc's intent
// results, "BMC power") on machine id, locking its row; a machine that is
// not registered (known only from its BMC) has no log and is skipped.
func NoteIfKnown(ctx context.Context, tx pgx.Tx, id, event, message string) error {
	var one int
	err := tx.QueryRow(ctx, `SELECT 1 FROM machines WHERE id = $1 FOR UPDATE`, id).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("lock machine %s: %w", id, err)
	}
	return logNotes(ctx, tx, []Event{{Machine: id, Type: event, Message: message}})
}

// logNotes logs events outside the state machine, the state unchanged,
// in one statement. A machine is named at most once per call.
func logNotes(ctx context.Context, tx pgx.Tx, evs []Event) error {
	ids, types, msgs := make([]string, len(evs)), make([]string, len(evs)), make([]string, len(evs))
	for i, e := range evs {
		ids[i], types[i], msgs[i] = e.Machine, e.Type, truncate(e.Message, 4096)
	}
	if len(evs) > 1 {
		seen := make(map[string]bool, len(evs))
		for _, id := range ids {
			if seen[id] {
				// The statement bumps each row once: log one after the other.
				for _, e := range evs {
					if err := logNotes(ctx, tx, []Event{e}); err != nil {
						return err
					}
				}
				return nil
			}
			seen[id] = true
		}
	}
	if _, err := tx.Exec(ctx, `WITH u AS (
			UPDATE machines m SET event_seq = m.event_seq + 1, last_event = x.event, last_event_at = now(), updated_at = now()
			FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[]) AS x (id, event, msg)
			WHERE m.id = x.id
			RETURNING m.id, m.event_seq, m.provisioning, x.event, x.msg)
		INSERT INTO machine_events (machine_id, seq, at, event, message, state)
		SELECT id, event_seq, now(), event, msg, provisioning FROM u`, ids, types, msgs); err != nil {
		return fmt.Errorf("store event: %w", err)
	}
	return nil
}

// transition runs one lifecycle event through the state machine and
// stores it with the machine's new state.
func transition(ctx context.Context, tx pgx.Tx, e Event) error {
	var (
		cur       string
		crashes   int
		seq       int64
		installed bool
	)
	if err := tx.QueryRow(ctx, `SELECT provisioning, crashes, event_seq, installed FROM machines WHERE id = $1`, e.Machine).
		Scan(&cur, &crashes, &seq, &installed); err != nil {
		return fmt.Errorf("read machine %s: %w", e.Machine, err)
	}
	msg := e.Message
	next, errText := fsm.State(cur), ""
	ev, _ := fsm.Parse(e.Type)
	if ev == fsm.PXEBooting && installed {
		// An installed machine passes the PXE service on its way to
		// its disk: worth a log line, not a state change.
		msg = strings.TrimSpace("boots from disk; " + msg)
	} else {
		var err error
		next, err = fsm.Transition(fsm.State(cur), ev)
		if err != nil {
			errText = err.Error()
		} else {
			crashes = fsm.Crashes(crashes, ev)
			installed = installed || ev == fsm.PhonedHome
		}
	}
	seq++
	// The log is ordered and timed by central's clock: machines' clocks
	// may be off, and clients follow the log by time. The agent's own time
	// stays in its agent event log.
	if _, err := tx.Exec(ctx, `INSERT INTO machine_events (machine_id, seq, at, event, message, state, error) VALUES ($1, $2, now(), $3, $4, $5, $6)`,
		e.Machine, seq, e.Type, truncate(msg, 4096), string(next), errText); err != nil {
		return fmt.Errorf("store event: %w", err)
	}
	if _, err := tx.Exec(ctx, `UPDATE machines SET provisioning = $2, last_event = $3, last_event_at = now(), crashes = $4,
		event_seq = $5, installed = $6, updated_at = now() WHERE id = $1`, e.Machine, string(next), e.Type, crashes, seq, installed); err != nil {
		return fmt.Errorf("update machine state: %w", err)
	}
	if fsm.Stable(next) && errText == "" {
		// A stable state ends the stuck episode, as it ends a crash loop
		// (stuck.go counts the cycles of one episode).
		if _, err := tx.Exec(ctx, `UPDATE machines SET stuck_state = '', stuck_cycles = 0, stuck_cycled_at = NULL, stuck_exhausted = FALSE
			WHERE id = $1 AND (stuck_state <> '' OR stuck_cycles <> 0)`, e.Machine); err != nil {
			return fmt.Errorf("end stuck episode of machine %s: %w", e.Machine, err)
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
