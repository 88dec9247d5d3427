// Package driver talks to one BMC: it reads its facts and executes
// actions, through bmclib v2.3.5 for everything bmclib offers (power,
// boot device, firmware; Redfish through its gofish provider, IPMI through
// its ipmitool provider) and directly through gofish or ipmitool for what
// that version of bmclib lacks (the machine's UUID, the identify LED, the
// power draw).
//
// Every call opens its own connection and closes it: a BMC is asked every
// poll interval or for an intent, and a kept session would expire or pile
// up on the BMC when metal-bmc dies. Redfish uses HTTP Basic by default
// for the same reason: a killed metal-bmc leaves no session behind on a
// BMC that holds only a few.
package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"time"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// ErrCredentials: the BMC refused the partition's credentials.
var ErrCredentials = errors.New("the BMC refused the credentials (wrong user or password?)")

// ErrUnsupported: the BMC's provider cannot do this.
var ErrUnsupported = errors.New("not supported by the BMC's provider")

// Creds log in to a BMC. They print redacted, so that no log line or
// error carries the password by accident.
type Creds struct {
	User, Password string
}

// String implements fmt.Stringer without the password.
func (c Creds) String() string { return "user=" + c.User + " password=<redacted>" }

// GoString keeps %#v from printing the password.
func (c Creds) GoString() string { return "driver.Creds{" + c.String() + "}" }

// LogValue implements slog.LogValuer without the password.
func (c Creds) LogValue() slog.Value { return slog.StringValue(c.String()) }

// Endpoint is where a BMC is and how to speak to it.
type Endpoint struct {
	// Address as discover.ParseAddress normalised it.
	Address  string
	Protocol agentv1.BmcProtocol
}

func (e Endpoint) ipmi() bool { return e.Protocol == agentv1.BmcProtocol_BMC_PROTOCOL_IPMI }

// Facts are what one poll of a BMC read.
type Facts struct {
	UUID, Vendor, Model, Serial string
	// UUIDAliases: the same GUID in the other byte orders BMCs use (IPMI
	// only; see GUIDNames).
	UUIDAliases             []string
	BMCVersion, BIOSVersion string
	Power                   agentv1.BmcPowerState
	Watts                   float64
	PSUs                    []*agentv1.BmcPowerSupply
	LED                     agentv1.BmcLed
}

// Driver reads and drives BMCs. *Bmclib is the real one.
type Driver interface {
	Facts(ctx context.Context, ep Endpoint, c Creds) (Facts, error)
	Power(ctx context.Context, ep Endpoint, c Creds, a agentv1.BmcPowerAction) error
	Boot(ctx context.Context, ep Endpoint, c Creds, d agentv1.BmcBootDevice, persistent bool) error
	Identify(ctx context.Context, ep Endpoint, c Creds, on bool) error
	Firmware(ctx context.Context, ep Endpoint, c Creds, comp agentv1.BmcFirmwareComponent, image io.ReadSeeker) error
}

// Bmclib is the Driver of real BMCs.
type Bmclib struct {
	// Timeout bounds one call (open, act, close); default 30 s.
	Timeout time.Duration
	// RedfishSessions logs in with a session instead of HTTP Basic.
	RedfishSessions bool
	// IpmitoolPath is ipmitool's binary; default "ipmitool" in PATH.
	IpmitoolPath string
	// IpmiCipherSuite pins IPMI's cipher suite; empty lets bmclib try
	// 3, then 17.
	IpmiCipherSuite string
	// HTTPClient, when set, is used for Redfish (tests with their own CA);
	// default: TLS without verification, as BMCs carry self-signed
	// certificates (docs/bmc.md).
	HTTPClient *http.Client
	Log        *slog.Logger
}

func (b *Bmclib) timeout() time.Duration {
	if b.Timeout > 0 {
		return b.Timeout
	}
	return 30 * time.Second
}

// call is the context of one call to a BMC: bounded by the timeout but
// not ended when ctx is (metal-bmc stopping). gofish and bmclib keep the
// context they connected with for every request, the logout included, so
// a cancelled one would leave the session open on the BMC, which holds
// only a few; a call in flight at shutdown finishes (or times out) and
// logs out instead.
func (b *Bmclib) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), b.timeout())
}

// ipmitool is the binary's path: bmclib wants a path it can stat, not a
// name to look up.
func (b *Bmclib) ipmitool() string {
	name := b.IpmitoolPath
	if name == "" {
		name = "ipmitool"
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return name
}

// splitAddress splits a normalised address into the scheme-and-host bmclib
// and gofish take and the port; the port defaults by protocol.
func splitAddress(ep Endpoint) (scheme, host, port string) {
	a := ep.Address
	if s, rest, ok := strings.Cut(a, "://"); ok {
		scheme, a = s, rest
	}
	host, port = a, ""
	if h, p, err := net.SplitHostPort(a); err == nil {
		host, port = h, p
	} else {
		host = strings.TrimSuffix(strings.TrimPrefix(a, "["), "]")
	}
	switch {
	case port != "":
	case ep.ipmi():
		port = "623"
	case scheme == "http":
		port = "80"
	default:
		port = "443"
	}
	if scheme == "" && !ep.ipmi() {
		scheme = "https"
	}
	return scheme, host, port
}

// bracket puts an IPv6 host in brackets for a URL.
func bracket(host string) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]"
	}
	return host
}

// authError tells a refused login from other failures; bmclib, gofish
// and ipmitool only say it in their messages, which can be pages of a
// BMC's JSON: a refused login is reported in one line.
func authError(err error) error {
	if err == nil {
		return nil
	}
	s := err.Error()
	// A 401 status in gofish's and bmclib's messages ("401: {...}"), not
	// in an address or port (127.0.0.1:40123). Compiled here, not in a
	// package variable: errors are rare.
	if regexp.MustCompile(`(^|[^:\d.])401([^\d]|$)`).MatchString(s) {
		return fmt.Errorf("%w: HTTP 401", ErrCredentials)
	}
	for _, sign := range []struct{ text, short string }{
		{"Unauthorized", "unauthorized"}, {"NoValidSession", "no valid session"},
		{"RAKP 2 HMAC is invalid", "IPMI RAKP authentication failed"}, {"unauthorized name", "IPMI user unknown"},
	} {
		if strings.Contains(s, sign.text) {
			return fmt.Errorf("%w: %s", ErrCredentials, sign.short)
		}
	}
	return errors.New(clean(s))
}

// clean shortens a provider error to one line of bounded length (ipmitool
// prints pages), so that it fits a fact and an event.
func clean(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 512 {
		s = s[:512] + "…"
	}
	return s
}
