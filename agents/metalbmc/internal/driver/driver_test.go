package driver

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

func TestAuthError(t *testing.T) {
	for _, tc := range []struct {
		in   string
		auth bool
	}{
		{`systems: failed: [{"error":"401: {\n \"error\": ...`, true},
		{`Get "https://127.0.0.1:40123/redfish/v1/": connection reset`, false},
		{`dial tcp 10.0.4.1:401: connection refused`, false},
		{`dial tcp 10.0.0.401: no route`, false},
		// ipmitool says this for a wrong password and for no answer alike;
		// only its verbose output tells them apart.
		{`Error: Unable to establish IPMI v2 / RMCP+ session`, false},
		{`> RAKP 2 HMAC is invalid Error: Unable to establish IPMI v2 / RMCP+ session`, true},
		{`RAKP 2 message indicates an error : unauthorized name`, true},
		{`i/o timeout`, false},
	} {
		err := authError(errors.New(tc.in))
		if got := errors.Is(err, ErrCredentials); got != tc.auth {
			t.Errorf("authError(%q) = %v, credentials %v want %v", tc.in, err, got, tc.auth)
		}
	}
}

func TestCredsNeverPrint(t *testing.T) {
	c := Creds{User: "admin", Password: "hunter2"}
	var b strings.Builder
	slog.New(slog.NewTextHandler(&b, nil)).Info("x", "creds", c)
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s", c, c, c, c), b.String()} {
		if strings.Contains(s, "hunter2") || !strings.Contains(s, "admin") {
			t.Errorf("printed %q", s)
		}
	}
}

func TestSplitAddress(t *testing.T) {
	ipmi, rf := agentv1.BmcProtocol_BMC_PROTOCOL_IPMI, agentv1.BmcProtocol_BMC_PROTOCOL_REDFISH
	for _, tc := range []struct {
		addr               string
		proto              agentv1.BmcProtocol
		scheme, host, port string
	}{
		{"10.0.0.1", rf, "https", "10.0.0.1", "443"},
		{"http://10.0.0.1", rf, "http", "10.0.0.1", "80"},
		{"10.0.0.1:8443", rf, "https", "10.0.0.1", "8443"},
		{"[fd00::1]", rf, "https", "fd00::1", "443"},
		{"[fd00::1]:623", ipmi, "", "fd00::1", "623"},
		{"10.0.0.1", ipmi, "", "10.0.0.1", "623"},
	} {
		s, h, p := splitAddress(Endpoint{Address: tc.addr, Protocol: tc.proto})
		if s != tc.scheme || h != tc.host || p != tc.port {
			t.Errorf("splitAddress(%q) = %q %q %q", tc.addr, s, h, p)
		}
	}
}

func TestIsOff(t *testing.T) {
	for s, want := range map[string]bool{
		"Off":                    true, // Redfish
		"off":                    true,
		"Chassis Power is off":   true, // ipmitool
		"Chassis Power is off\n": true,
		"On":                     false,
		"PoweringOn":             false,
		"PoweringOff":            false,
		"Chassis Power is on":    false,
		"":                       false,
	} {
		if got := isOff(s); got != want {
			t.Errorf("isOff(%q) = %v, want %v", s, got, want)
		}
	}
}
