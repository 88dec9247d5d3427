package driver

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/stmcginnis/gofish"
	"github.com/stmcginnis/gofish/common"
	"github.com/stmcginnis/gofish/redfish"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Facts reads one BMC. The power state comes through bmclib for IPMI;
// for Redfish one gofish connection reads everything (bmclib v2.3.5's
// Inventory knows only some vendors' resource ids and reads every CPU,
// DIMM and drive, but not the UUID, the LED or the power draw).
func (b *Bmclib) Facts(ctx context.Context, ep Endpoint, c Creds) (Facts, error) {
	ctx, cancel := b.call(ctx)
	defer cancel()
	if ep.ipmi() {
		return b.ipmiFacts(ctx, ep, c)
	}
	return b.redfishFacts(ctx, ep, c)
}

// Identify switches the identify LED: Redfish's IndicatorLED through
// gofish, IPMI's chassis identify through ipmitool (bmclib v2.3.5 has no
// LED call).
func (b *Bmclib) Identify(ctx context.Context, ep Endpoint, c Creds, on bool) error {
	ctx, cancel := b.call(ctx)
	defer cancel()
	if ep.ipmi() {
		arg := "0"
		if on {
			arg = "force"
		}
		_, err := b.runIpmitool(ctx, ep, c, "chassis", "identify", arg)
		return err
	}
	api, sys, err := b.redfishSystem(ctx, ep, c)
	if err != nil {
		return err
	}
	defer api.Logout()
	sys.IndicatorLED = common.OffIndicatorLED
	if on {
		sys.IndicatorLED = common.LitIndicatorLED
	}
	if err := sys.Update(); err != nil {
		return fmt.Errorf("identify LED: %w", authError(err))
	}
	return nil
}

// httpClient is the Redfish client of one connection to one BMC (a poll
// or an intent): its connections are kept alive across that connection's
// requests and closed at its logout.
func (b *Bmclib) httpClient() *http.Client {
	if b.HTTPClient != nil {
		return b.HTTPClient
	}
	return &http.Client{
		Timeout: b.timeout(),
		Transport: keepAlive{&http.Transport{
			// BMCs carry self-signed certificates (docs/bmc.md).
			TLSClientConfig:     &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // see above
			Proxy:               nil,
			MaxIdleConnsPerHost: 4,
		}},
	}
}

// keepAlive undoes gofish's Connection: close. gofish v0.20 marks every
// request Close unless it built the HTTP client itself, so each of a
// poll's requests paid a TCP and TLS handshake of its own (8 per poll, the
// bulk of metal-bmc's CPU: BENCHMARKS.md). Its own client would take proxy
// settings from the environment, which BMC traffic must never follow.
type keepAlive struct{ t *http.Transport }

func (k keepAlive) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Close || r.Header.Get("Connection") != "" {
		r = r.Clone(r.Context())
		r.Close = false
		r.Header.Del("Connection")
	}
	return k.t.RoundTrip(r)
}

// CloseIdleConnections lets http.Client.CloseIdleConnections (gofish's
// logout) close the kept connections.
func (k keepAlive) CloseIdleConnections() { k.t.CloseIdleConnections() }

// redfishConnect connects to a Redfish BMC; the caller logs out.
func (b *Bmclib) redfishConnect(ctx context.Context, ep Endpoint, c Creds) (*gofish.APIClient, error) {
	scheme, host, port := splitAddress(ep)
	api, err := gofish.ConnectContext(ctx, gofish.ClientConfig{
		Endpoint:   scheme + "://" + bracket(host) + ":" + port,
		Username:   c.User,
		Password:   c.Password,
		BasicAuth:  !b.RedfishSessions,
		HTTPClient: b.httpClient(),
	})
	if err != nil {
		return nil, fmt.Errorf("connect: %w", authError(err))
	}
	return api, nil
}

// redfishSystem connects and returns the one computer system of the BMC.
func (b *Bmclib) redfishSystem(ctx context.Context, ep Endpoint, c Creds) (*gofish.APIClient, *redfish.ComputerSystem, error) {
	api, err := b.redfishConnect(ctx, ep, c)
	if err != nil {
		return nil, nil, err
	}
	systems, err := api.Service.Systems()
	if err != nil {
		api.Logout()
		return nil, nil, fmt.Errorf("systems: %w", authError(err))
	}
	if len(systems) != 1 {
		api.Logout()
		return nil, nil, fmt.Errorf("the BMC has %d computer systems, want one", len(systems))
	}
	return api, systems[0], nil
}

func (b *Bmclib) redfishFacts(ctx context.Context, ep Endpoint, c Creds) (Facts, error) {
	api, sys, err := b.redfishSystem(ctx, ep, c)
	if err != nil {
		return Facts{}, err
	}
	defer api.Logout()
	f := Facts{
		UUID:        strings.ToLower(sys.UUID),
		Vendor:      sys.Manufacturer,
		Model:       sys.Model,
		Serial:      sys.SerialNumber,
		BIOSVersion: sys.BIOSVersion,
		Power:       powerState(string(sys.PowerState)),
		LED:         led(string(sys.IndicatorLED)),
	}
	if f.UUID == "" {
		return Facts{}, errors.New("the BMC reports no system UUID")
	}
	// The rest is optional: a BMC without a manager or power resource is
	// still a BMC whose machine we know.
	if managers, err := api.Service.Managers(); err == nil {
		for _, m := range managers {
			if m.ManagerType == redfish.BMCManagerType {
				f.BMCVersion = m.FirmwareVersion
				break
			}
		}
	}
	// The first chassis with a Power resource: a BMC of one machine has
	// one chassis.
	chassis, _ := api.Service.Chassis()
	for _, ch := range chassis {
		p, err := ch.Power()
		if err != nil || p == nil {
			continue
		}
		for _, pc := range p.PowerControl {
			f.Watts += float64(pc.PowerConsumedWatts)
		}
		for _, ps := range p.PowerSupplies {
			id := ps.MemberID
			if id == "" {
				id = ps.Name
			}
			f.PSUs = append(f.PSUs, &agentv1.BmcPowerSupply{Id: id, Health: string(ps.Status.Health), CapacityWatts: float64(ps.PowerCapacityWatts)})
		}
		break
	}
	return f, nil
}

// ErrSSHDisabled: the BMC says its SSH service is off.
var ErrSSHDisabled = errors.New("the BMC's SSH service is disabled (its Redfish NetworkProtocol says so)")

// SSHPort reads the port of a Redfish BMC's SSH service (its serial
// console) from its BMC manager's NetworkProtocol. 0 and no error: the
// BMC does not say (no such resource, or no port), the caller's default
// holds; ErrSSHDisabled when it says SSH is off.
func (b *Bmclib) SSHPort(ctx context.Context, ep Endpoint, c Creds) (int, error) {
	ctx, cancel := b.call(ctx)
	defer cancel()
	api, err := b.redfishConnect(ctx, ep, c)
	if err != nil {
		return 0, err
	}
	defer api.Logout()
	managers, err := api.Service.Managers()
	if err != nil {
		return 0, fmt.Errorf("managers: %w", authError(err))
	}
	for _, m := range managers {
		if m.ManagerType != redfish.BMCManagerType {
			continue
		}
		np, err := m.NetworkProtocol()
		if err != nil || np == nil {
			return 0, nil
		}
		switch {
		case !np.SSH.ProtocolEnabled && np.SSH.Port == 0:
			return 0, nil // says nothing of SSH
		case !np.SSH.ProtocolEnabled:
			return 0, ErrSSHDisabled
		case np.SSH.Port < 1 || np.SSH.Port > 65535:
			return 0, nil
		}
		return int(np.SSH.Port), nil
	}
	return 0, nil
}

func powerState(s string) agentv1.BmcPowerState {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "on", "poweringoff":
		return agentv1.BmcPowerState_BMC_POWER_STATE_ON
	case "off", "poweringon":
		return agentv1.BmcPowerState_BMC_POWER_STATE_OFF
	}
	return agentv1.BmcPowerState_BMC_POWER_STATE_UNSPECIFIED
}

func led(s string) agentv1.BmcLed {
	switch s {
	case "Off":
		return agentv1.BmcLed_BMC_LED_OFF
	case "Lit":
		return agentv1.BmcLed_BMC_LED_LIT
	case "Blinking":
		return agentv1.BmcLed_BMC_LED_BLINKING
	}
	return agentv1.BmcLed_BMC_LED_UNSPECIFIED
}

// runIpmitool runs one ipmitool command against the endpoint, the
// password in the environment (IPMITOOL_PASSWORD with -E, as bmclib does)
// so that it shows in no process list.
func (b *Bmclib) runIpmitool(ctx context.Context, ep Endpoint, c Creds, args ...string) (string, error) {
	_, host, port := splitAddress(ep)
	// -v: only the verbose output tells a refused password ("RAKP 2 HMAC
	// is invalid") from a BMC that does not answer; both end in "Unable
	// to establish IPMI v2 / RMCP+ session".
	full := []string{"-I", "lanplus", "-H", host, "-p", port, "-U", c.User, "-E", "-N", "2", "-R", "2", "-v"}
	if b.IpmiCipherSuite != "" {
		full = append(full, "-C", b.IpmiCipherSuite)
	}
	cmd := exec.CommandContext(ctx, b.ipmitool(), append(full, args...)...)
	cmd.Env = []string{"IPMITOOL_PASSWORD=" + c.Password, "PATH=/usr/bin:/bin"}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		msg := ipmiError(errb.String())
		if msg == "" {
			msg = err.Error()
		}
		return "", fmt.Errorf("ipmitool %s: %w", strings.Join(args, " "), authError(errors.New(msg)))
	}
	return out.String(), nil
}

// ipmiError keeps the lines of ipmitool's verbose stderr that say what
// went wrong.
func ipmiError(stderr string) string {
	var keep []string
	for _, l := range strings.Split(stderr, "\n") {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), ">"))
		if strings.Contains(l, "RAKP") || strings.Contains(l, "rror") || strings.Contains(l, "failed") || strings.Contains(l, "nauthorized") {
			keep = append(keep, l)
		}
	}
	if len(keep) == 0 {
		return strings.TrimSpace(stderr)
	}
	return strings.Join(keep, "; ")
}

// ipmiGUID reads the BMC's system GUID raw and decodes it in every byte
// order BMCs use (GUIDNames). An ipmitool without "dump" prints its own
// decoding instead, labelled: those bytes are read alike, so what it
// printed is still among the names.
func (b *Bmclib) ipmiGUID(ctx context.Context, ep Endpoint, c Creds) ([]string, error) {
	out, err := b.runIpmitool(ctx, ep, c, "mc", "guid", "dump")
	if err != nil {
		return nil, err
	}
	raw, err := parseGUIDDump(out)
	if err != nil {
		return nil, fmt.Errorf("the BMC's system GUID: %w", err)
	}
	return GUIDNames(raw, time.Now()), nil
}

// ipmiFields parses ipmitool's "Key : value" lines.
func ipmiFields(out string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if _, seen := m[k]; !seen && k != "" {
			m[k] = v
		}
	}
	return m
}

func (b *Bmclib) ipmiFacts(ctx context.Context, ep Endpoint, c Creds) (Facts, error) {
	var f Facts
	names, err := b.ipmiGUID(ctx, ep, c)
	if err != nil {
		return Facts{}, err
	}
	f.UUID, f.UUIDAliases = names[0], names[1:]
	status, err := b.runIpmitool(ctx, ep, c, "chassis", "power", "status")
	if err != nil {
		return Facts{}, err
	}
	switch {
	case strings.Contains(status, "is on"):
		f.Power = agentv1.BmcPowerState_BMC_POWER_STATE_ON
	case strings.Contains(status, "is off"):
		f.Power = agentv1.BmcPowerState_BMC_POWER_STATE_OFF
	}
	// What follows is optional: simulators and old BMCs lack some of it.
	if out, err := b.runIpmitool(ctx, ep, c, "mc", "info"); err == nil {
		mc := ipmiFields(out)
		f.BMCVersion = mc["Firmware Revision"]
		f.Vendor = mc["Manufacturer Name"]
	}
	if out, err := b.runIpmitool(ctx, ep, c, "fru", "print", "0"); err == nil {
		fru := ipmiFields(out)
		for _, k := range []string{"Product Manufacturer", "Board Mfg"} {
			if fru[k] != "" {
				f.Vendor = fru[k]
				break
			}
		}
		f.Model, f.Serial = fru["Product Name"], fru["Product Serial"]
		if f.Serial == "" {
			f.Serial = fru["Board Serial"]
		}
	}
	if out, err := b.runIpmitool(ctx, ep, c, "dcmi", "power", "reading"); err == nil {
		if v := ipmiFields(out)["Instantaneous power reading"]; v != "" {
			if n, err := strconv.ParseFloat(strings.Fields(v)[0], 64); err == nil {
				f.Watts = n
			}
		}
	}
	return f, nil
}
