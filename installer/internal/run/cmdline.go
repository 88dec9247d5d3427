package run

import (
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// Cmdline is the installer's part of the kernel command line, written by
// pixie and central (docs/installer.md, "Kernel command line").
type Cmdline struct {
	// Centrals are central's agent endpoints, host:port ([v6]:port).
	Centrals  []string
	Partition string
	// CA is the lower-case hex sha256 of central's CA certificate (DER).
	CA string
	// Pixie is the base URL of the partition's pixie HTTP server.
	Pixie string
	// BootToken is the one-time token pixie added for this boot; empty
	// when pixie could not get one.
	BootToken string
	// Plaintext (metal.plaintext=1) talks to a central started with
	// --insecure-plaintext; only for labs, it replaces the CA pin.
	Plaintext bool
	// RelayPort (metal.relay_port=, default DefaultRelayPort, 0: none) is
	// the port of the leaves' agent relays, written into the installed
	// system's phone-home configuration: in a tenant VRF they are its only
	// way to central.
	RelayPort int
}

// DefaultRelayPort is metal-core's default --relay-port.
const DefaultRelayPort = 4443

// ParseCmdline reads a /proc/cmdline. Unknown keys belong to the kernel or
// to others and are ignored; the metal.* keys are checked here so that a
// wrong boot configuration fails with a clear message at once instead of as
// a dial error much later.
func ParseCmdline(s string) (Cmdline, error) {
	c := Cmdline{RelayPort: DefaultRelayPort}
	var errs []error
	for _, f := range splitCmdline(s) {
		key, val, _ := strings.Cut(f, "=")
		switch key {
		case "metal.central":
			for _, a := range strings.Split(val, ",") {
				if a == "" {
					continue
				}
				if err := checkHostPort(a); err != nil {
					errs = append(errs, fmt.Errorf("metal.central: %w", err))
					continue
				}
				c.Centrals = append(c.Centrals, a)
			}
		case "metal.partition":
			c.Partition = val
		case "metal.ca":
			c.CA = strings.ToLower(val)
		case "metal.pixie":
			c.Pixie = strings.TrimRight(val, "/")
		case "metal.boot_token":
			c.BootToken = val
		case "metal.plaintext":
			c.Plaintext = val == "1" || val == "true" || val == "yes"
		case "metal.relay_port":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 || n > 65535 {
				errs = append(errs, fmt.Errorf("metal.relay_port %q: want 0 (none) or a port 1-65535", val))
				continue
			}
			c.RelayPort = n
		}
	}
	if len(c.Centrals) == 0 {
		errs = append(errs, errors.New("metal.central missing: the boot configuration must name central's agent endpoints (metal.central=host:port)"))
	}
	if c.Partition == "" {
		errs = append(errs, errors.New("metal.partition missing: the boot configuration must name the partition (metal.partition=<id>)"))
	}
	if c.CA != "" {
		if b, err := hex.DecodeString(c.CA); err != nil || len(b) != 32 {
			errs = append(errs, fmt.Errorf("metal.ca %q is not a hex sha256", c.CA))
		}
	} else if !c.Plaintext {
		errs = append(errs, errors.New("metal.ca missing: without the CA pin the installer cannot trust central (metal.plaintext=1 only for a plaintext lab central)"))
	}
	if c.Pixie != "" {
		u, err := url.Parse(c.Pixie)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("metal.pixie %q is not an http(s) URL", c.Pixie))
		}
	} else if c.CA != "" {
		errs = append(errs, errors.New("metal.pixie missing: the installer fetches central's CA from pixie"))
	}
	if len(errs) > 0 {
		return Cmdline{}, fmt.Errorf("kernel command line: %w", errors.Join(errs...))
	}
	return c, nil
}

// LogValue keeps the boot token out of logs: it is a credential.
func (c Cmdline) LogValue() slog.Value {
	tok := "none"
	if c.BootToken != "" {
		tok = "set"
	}
	return slog.GroupValue(
		slog.String("centrals", strings.Join(c.Centrals, ",")),
		slog.String("partition", c.Partition),
		slog.String("ca", c.CA),
		slog.String("pixie", c.Pixie),
		slog.String("boot_token", tok),
		slog.Bool("plaintext", c.Plaintext),
		slog.Int("relay_port", c.RelayPort),
	)
}

// splitCmdline splits at spaces outside double quotes, as the kernel does
// (key="a b" is one parameter; the quotes are removed).
func splitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	quoted, any := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
			any = true
		case !quoted && (r == ' ' || r == '\t' || r == '\n'):
			if any {
				out = append(out, cur.String())
			}
			cur.Reset()
			any = false
		default:
			cur.WriteRune(r)
			any = true
		}
	}
	if any {
		out = append(out, cur.String())
	}
	return out
}

func checkHostPort(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("%q: %w", a, err)
	}
	if host == "" {
		return fmt.Errorf("%q: empty host", a)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("%q: bad port", a)
	}
	return nil
}
