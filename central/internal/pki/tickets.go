package pki

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/metalfleet/metalfleet/central/internal/file"
)

// TicketKeyName is the secret in the data dir that TLS session ticket keys
// derive from.
const TicketKeyName = "session-ticket.key"

// SessionTickets makes cfg's TLS session tickets outlive the process.
// crypto/tls makes fresh ticket keys in every process, so after a restart
// no agent can resume its session and the whole fleet comes back with
// full handshakes at once — the most expensive moment to pay for them.
// The keys derive from a secret kept in dataDir (made on first use, 0600):
// one key per UTC day; tickets of the last ticketDays days are accepted
// (crypto/tls accepts none older than 7 days anyway), so a day's key
// stolen from memory is useless a week later. Agents renew their tickets
// daily while connected (agent.Config.SessionRefresh). Replicas behind one
// address resume each other's sessions when they share the secret file.
// now is the clock (time.Now outside tests).
func SessionTickets(cfg *tls.Config, dataDir string, now func() time.Time) error {
	secret, err := ticketSecret(filepath.Join(dataDir, TicketKeyName))
	if err != nil {
		return err
	}
	t := &ticketer{secret: secret, now: now}
	cfg.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		return t.keys().EncryptTicket(cs, ss)
	}
	cfg.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		// An unknown or expired ticket is no error: the handshake goes on
		// in full.
		return t.keys().DecryptTicket(identity, cs)
	}
	return nil
}

// ticketSecret reads the secret, making it first if there is none.
func ticketSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		secret := make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return nil, fmt.Errorf("pki: session ticket secret: %w", err)
		}
		if err := file.WriteAtomic(path, []byte(hex.EncodeToString(secret)+"\n"), keyMode); err != nil {
			return nil, fmt.Errorf("pki: write session ticket secret: %w", err)
		}
		return secret, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pki: read session ticket secret: %w", err)
	}
	secret, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(secret) < 32 {
		return nil, fmt.Errorf("pki: %s: want at least 32 hex-encoded bytes (delete it to make a new one; agents then do one full handshake)", path)
	}
	return secret, nil
}

// ticketDays is how many days' keys decrypt: today's and the six before.
const ticketDays = 7

// ticketer holds the day's key set: a config only used for its keys, as
// crypto/tls encrypts and decrypts tickets with a config's keys.
type ticketer struct {
	secret []byte
	now    func() time.Time
	mu     sync.Mutex
	day    string
	cfg    *tls.Config
}

func (t *ticketer) keys() *tls.Config {
	day := t.now().UTC().Format(time.DateOnly)
	t.mu.Lock()
	defer t.mu.Unlock()
	if day != t.day {
		keys := make([][32]byte, ticketDays)
		for i := range keys {
			keys[i] = t.derive(t.now().UTC().AddDate(0, 0, -i).Format(time.DateOnly))
		}
		c := &tls.Config{}
		// The first key, today's, encrypts; all of them decrypt.
		c.SetSessionTicketKeys(keys)
		t.day, t.cfg = day, c
	}
	return t.cfg
}

func (t *ticketer) derive(day string) [32]byte {
	m := hmac.New(sha256.New, t.secret)
	m.Write([]byte("metalfleet tls session ticket key " + day))
	var k [32]byte
	copy(k[:], m.Sum(nil))
	return k
}
