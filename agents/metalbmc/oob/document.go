package oob

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/metalfleet/metalfleet/agents/metalbmc/internal/discover"
	"github.com/metalfleet/metalfleet/agents/metalbmc/internal/driver"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// document is a checked BmcDocument.
type document struct {
	partition    string
	creds        driver.Creds
	static       []discover.Target
	machines     []*machine
	pollInterval time.Duration
	leaseCIDRs   []netip.Prefix
}

// machine is one machine's intents, checked.
type machine struct {
	id string
	// bmc, when set, is where its BMC is (also polled as a static BMC).
	bmc      *discover.Target
	power    *agentv1.BmcPowerIntent
	boot     *agentv1.BmcBootIntent
	identify *agentv1.BmcIdentifyIntent
	firmware *agentv1.BmcFirmwareIntent
}

// Limits on a document; central enforces its own, these keep a hostile
// or broken one from costing metal-bmc more than it should.
const (
	maxStatic   = 10000
	maxMachines = 10000
	maxCred     = 256
	maxURL      = 2048
)

// fieldErr names the field that is wrong, as central's errors do.
func fieldErr(path, format string, args ...any) error {
	return fmt.Errorf("invalid bmc document: %s: %s", path, fmt.Sprintf(format, args...))
}

func parseDocument(d *agentv1.BmcDocument) (*document, error) {
	doc := &document{}
	if d == nil {
		return doc, nil
	}
	doc.partition = d.GetPartitionId()
	c := d.GetCredentials()
	for _, f := range []struct{ name, v string }{{"user", c.GetUser()}, {"password", c.GetPassword()}} {
		// The value is never echoed: it may be the password.
		switch {
		case len(f.v) > maxCred:
			return nil, fieldErr("bmc.credentials."+f.name, "longer than %d bytes", maxCred)
		case strings.ContainsAny(f.v, "\x00\r\n"):
			return nil, fieldErr("bmc.credentials."+f.name, "contains a NUL byte or a line break")
		case !utf8.ValidString(f.v):
			return nil, fieldErr("bmc.credentials."+f.name, "not UTF-8")
		}
	}
	doc.creds = driver.Creds{User: c.GetUser(), Password: c.GetPassword()}
	if len(d.GetStaticBmcs()) > maxStatic {
		return nil, fieldErr("bmc.static_bmcs", "%d entries, at most %d", len(d.GetStaticBmcs()), maxStatic)
	}
	for i, ep := range d.GetStaticBmcs() {
		t, err := endpoint(ep)
		if err != nil {
			return nil, fieldErr(fmt.Sprintf("bmc.static_bmcs[%d]", i), "%v", err)
		}
		doc.static = append(doc.static, t)
	}
	if iv := d.GetPollInterval(); iv != nil {
		if err := iv.CheckValid(); err != nil {
			return nil, fieldErr("bmc.poll_interval", "%v", err)
		}
		if v := iv.AsDuration(); v != 0 && (v < time.Second || v > time.Hour) {
			return nil, fieldErr("bmc.poll_interval", "%v is outside 1s-1h", v)
		}
		doc.pollInterval = iv.AsDuration()
	}
	for i, s := range d.GetLeaseCidrs() {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fieldErr(fmt.Sprintf("bmc.lease_cidrs[%d]", i), "%v", err)
		}
		doc.leaseCIDRs = append(doc.leaseCIDRs, p.Masked())
	}
	if len(d.GetMachines()) > maxMachines {
		return nil, fieldErr("bmc.machines", "%d entries, at most %d", len(d.GetMachines()), maxMachines)
	}
	seen := map[string]int{}
	for i, m := range d.GetMachines() {
		path := fmt.Sprintf("bmc.machines[%d]", i)
		id, err := uuid.Parse(m.GetMachineId())
		if err != nil || len(m.GetMachineId()) != 36 {
			return nil, fieldErr(path+".machine_id", "%q is not a UUID", truncate(m.GetMachineId(), 64))
		}
		mm := &machine{id: id.String()}
		if j, dup := seen[mm.id]; dup {
			return nil, fieldErr(path+".machine_id", "%s is listed twice (also machines[%d])", mm.id, j)
		}
		seen[mm.id] = i
		if m.GetBmc() != nil {
			t, err := endpoint(m.GetBmc())
			if err != nil {
				return nil, fieldErr(path+".bmc", "%v", err)
			}
			mm.bmc = &t
		}
		if p := m.GetPower(); p.GetGeneration() > 0 {
			if _, ok := agentv1.BmcPowerAction_name[int32(p.GetAction())]; !ok || p.GetAction() == agentv1.BmcPowerAction_BMC_POWER_ACTION_UNSPECIFIED {
				return nil, fieldErr(path+".power.action", "%d is not a power action", p.GetAction())
			}
			mm.power = p
		}
		if b := m.GetBoot(); b.GetGeneration() > 0 {
			if _, ok := agentv1.BmcBootDevice_name[int32(b.GetDevice())]; !ok || b.GetDevice() == agentv1.BmcBootDevice_BMC_BOOT_DEVICE_UNSPECIFIED {
				return nil, fieldErr(path+".boot.device", "%d is not a boot device", b.GetDevice())
			}
			mm.boot = b
		}
		if l := m.GetIdentify(); l.GetGeneration() > 0 {
			mm.identify = l
		}
		if f := m.GetFirmware(); f.GetGeneration() > 0 {
			if _, ok := agentv1.BmcFirmwareComponent_name[int32(f.GetComponent())]; !ok || f.GetComponent() == agentv1.BmcFirmwareComponent_BMC_FIRMWARE_COMPONENT_UNSPECIFIED {
				return nil, fieldErr(path+".firmware.component", "%d is not a firmware component", f.GetComponent())
			}
			u, err := url.Parse(f.GetUrl())
			switch {
			case len(f.GetUrl()) > maxURL:
				return nil, fieldErr(path+".firmware.url", "longer than %d bytes", maxURL)
			case err != nil:
				return nil, fieldErr(path+".firmware.url", "%v", err)
			case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
				return nil, fieldErr(path+".firmware.url", "%q: want an http or https URL", truncate(f.GetUrl(), 128))
			case u.User != nil:
				return nil, fieldErr(path+".firmware.url", "credentials in the URL are not allowed")
			}
			if sum := f.GetSha256(); sum != "" {
				if b, err := hex.DecodeString(sum); err != nil || len(b) != 32 || strings.ToLower(sum) != sum {
					return nil, fieldErr(path+".firmware.sha256", "want 64 lower-case hex digits")
				}
			}
			mm.firmware = f
		}
		doc.machines = append(doc.machines, mm)
	}
	return doc, nil
}

func endpoint(ep *agentv1.BmcEndpoint) (discover.Target, error) {
	p := ep.GetProtocol()
	if _, ok := agentv1.BmcProtocol_name[int32(p)]; !ok {
		return discover.Target{}, fmt.Errorf("protocol %d is unknown", p)
	}
	if p == agentv1.BmcProtocol_BMC_PROTOCOL_UNSPECIFIED {
		p = agentv1.BmcProtocol_BMC_PROTOCOL_REDFISH
	}
	a, err := discover.ParseAddress(ep.GetAddress(), p)
	if err != nil {
		return discover.Target{}, err
	}
	return discover.Target{Address: a, Protocol: p, Source: discover.Static}, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
