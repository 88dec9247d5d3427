package phonehome

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// File is /etc/metal/phonehome.json as the installer writes it (mode 0600).
type File struct {
	MachineID string   `json:"machine_id"`
	Centrals  []string `json:"centrals"`
	CAPEM     string   `json:"ca_pem"`
	// Token is the machine's agent credential; it never goes into a log.
	Token string `json:"token"`
	// RelayPort, when set, is the port of the leaves' agent relays: the
	// phone-home dials its default routers on it first (Endpoints).
	RelayPort int `json:"relay_port,omitempty"`

	pool *x509.CertPool
}

// LogValue keeps the token out of logs even when the whole file is logged.
func (f *File) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("machine_id", f.MachineID),
		slog.Any("centrals", f.Centrals),
		slog.Bool("token_set", f.Token != ""),
	)
}

// maxConfigSize bounds what is read: the file holds an id, a few addresses,
// a CA and a token.
const maxConfigSize = 1 << 20

// LoadFile reads and checks the phone-home configuration. Errors name the
// file and the field and never contain the token.
func LoadFile(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("phone-home config: %w", err)
	}
	f, err := ParseFile(b)
	if err != nil {
		return nil, fmt.Errorf("phone-home config %s: %w", path, err)
	}
	return f, nil
}

// ParseFile parses and checks the content of a phone-home configuration.
func ParseFile(b []byte) (*File, error) {
	if len(b) > maxConfigSize {
		return nil, fmt.Errorf("larger than %d bytes", maxConfigSize)
	}
	f := &File{}
	if err := json.Unmarshal(b, f); err != nil {
		// The JSON error quotes no values, only offsets and types.
		return nil, fmt.Errorf("not a JSON object with machine_id, centrals, ca_pem and token: %w", err)
	}
	f.MachineID = strings.ToLower(strings.TrimSpace(f.MachineID))
	if err := checkIdentity(f.MachineID); err != nil {
		return nil, fmt.Errorf("machine_id: %w", err)
	}
	if len(f.Centrals) == 0 {
		return nil, errors.New("centrals: at least one host:port required")
	}
	for i, c := range f.Centrals {
		if err := checkHostPort(c); err != nil {
			return nil, fmt.Errorf("centrals[%d] %q: %w", i, c, err)
		}
	}
	if f.RelayPort < 0 || f.RelayPort > 65535 {
		return nil, errors.New("relay_port: 0 (none) or 1-65535")
	}
	if strings.TrimSpace(f.Token) == "" {
		return nil, errors.New("token missing")
	}
	f.Token = strings.TrimSpace(f.Token)
	pool, err := parseCAs(f.CAPEM)
	if err != nil {
		return nil, fmt.Errorf("ca_pem: %w", err)
	}
	f.pool = pool
	return f, nil
}

// TLS trusts only the CA of the file, not the system roots: the machine
// must not take orders from any server with a publicly valid certificate.
func (f *File) TLS() *tls.Config {
	c := &tls.Config{RootCAs: f.pool, MinVersion: tls.VersionTLS12}
	if f.RelayPort != 0 {
		// Through a relay the address dialled is the leaf's; the
		// certificate to verify is still central's.
		if host, _, err := net.SplitHostPort(f.Centrals[0]); err == nil {
			c.ServerName = host
		}
	}
	return c
}

func parseCAs(s string) (*x509.CertPool, error) {
	rest := []byte(s)
	pool := x509.NewCertPool()
	n := 0
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		n++
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", n, err)
		}
		pool.AddCert(cert)
	}
	if n == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return pool, nil
}

// checkIdentity applies central's rule for agent identities.
func checkIdentity(s string) error {
	if s == "" {
		return errors.New("missing")
	}
	if len(s) > 128 {
		return errors.New("longer than 128 characters")
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._:-", r)) {
			return fmt.Errorf("%q: only letters, digits and . _ : - allowed", s)
		}
	}
	return nil
}

func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("want host:port ([addr]:port for IPv6)")
	}
	if host == "" {
		return errors.New("empty host")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return errors.New("port must be 1-65535")
	}
	return nil
}

// Installed is what /etc/metal/install.json tells about the installation.
type Installed struct {
	// AllocationID is the allocation the installer installed.
	AllocationID string
	// RebootGeneration is the machine document's reboot_generation at
	// install time, when the installer recorded it.
	RebootGeneration *uint64
}

// ReadInstalled reads the installer's record of the installation: protojson
// of the MachineAllocation, or of the whole MachineDocument, which also
// carries the reboot generation at install time. A missing file is no
// error (a machine installed by hand has none).
func ReadInstalled(path string) (Installed, error) {
	if path == "" {
		return Installed{}, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Installed{}, nil
	}
	if err != nil {
		return Installed{}, fmt.Errorf("install record: %w", err)
	}
	in, err := parseInstalled(b)
	if err != nil {
		return Installed{}, fmt.Errorf("install record %s: %w", path, err)
	}
	return in, nil
}

func parseInstalled(b []byte) (Installed, error) {
	// The two forms share no field name, so the strict parse tells them
	// apart; the lenient one takes an allocation from a newer installer.
	alloc := &agentv1.MachineAllocation{}
	if err := protojson.Unmarshal(b, alloc); err == nil {
		return Installed{AllocationID: alloc.GetId()}, nil
	}
	doc := &agentv1.MachineDocument{}
	if err := protojson.Unmarshal(b, doc); err == nil {
		gen := doc.GetRebootGeneration()
		return Installed{AllocationID: doc.GetAllocation().GetId(), RebootGeneration: &gen}, nil
	}
	alloc.Reset()
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, alloc); err != nil {
		return Installed{}, fmt.Errorf("neither a MachineAllocation nor a MachineDocument: %w", err)
	}
	return Installed{AllocationID: alloc.GetId()}, nil
}
