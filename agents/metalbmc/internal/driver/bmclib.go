package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	bmclib "github.com/bmc-toolbox/bmclib/v2"
	bmclibErrs "github.com/bmc-toolbox/bmclib/v2/errors"
	"github.com/go-logr/logr"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// open returns a bmclib client with only the provider of the endpoint's
// protocol registered and opened: bmclib would otherwise try every
// provider it knows (ipmitool against a Redfish BMC, vendor APIs) and take
// the first that answers.
func (b *Bmclib) open(ctx context.Context, ep Endpoint, c Creds) (*bmclib.Client, error) {
	scheme, host, port := splitAddress(ep)
	opts := []bmclib.Option{bmclib.WithLogger(logr.Discard()), bmclib.WithPerProviderTimeout(b.timeout())}
	provider := "gofish"
	if ep.ipmi() {
		provider = "ipmitool"
		opts = append(opts, bmclib.WithIpmitoolPort(port), bmclib.WithIpmitoolPath(b.ipmitool()))
		if b.IpmiCipherSuite != "" {
			opts = append(opts, bmclib.WithIpmitoolCipherSuite(b.IpmiCipherSuite))
		}
	} else {
		host = scheme + "://" + bracket(host)
		opts = append(opts, bmclib.WithRedfishPort(port), bmclib.WithRedfishUseBasicAuth(!b.RedfishSessions))
		opts = append(opts, bmclib.WithRedfishHTTPClient(b.httpClient()))
	}
	cl := bmclib.NewClient(host, c.User, c.Password, opts...)
	cl.Registry.Drivers = cl.Registry.For(provider)
	if len(cl.Registry.Drivers) == 0 {
		return nil, fmt.Errorf("bmclib provider %s is not available (is %s installed?)", provider, b.ipmitool())
	}
	if err := cl.Open(ctx); err != nil {
		return nil, fmt.Errorf("open %s: %w", provider, authError(err))
	}
	return cl, nil
}

// with opens a client, runs f and closes the client again.
func (b *Bmclib) with(ctx context.Context, ep Endpoint, c Creds, f func(ctx context.Context, cl *bmclib.Client) error) error {
	ctx, cancel := b.call(ctx)
	defer cancel()
	cl, err := b.open(ctx, ep, c)
	if err != nil {
		return err
	}
	defer cl.Close(ctx) //nolint:errcheck // a failed logout changes nothing for the action
	return f(ctx, cl)
}

// Power executes a power action through bmclib. Reset is a hard reset of
// a running machine and cycle is off then on, on both protocols; bmclib's
// own words mean the opposite on Redfish (its "reset" sends PowerCycle,
// its "cycle" ForceRestart), so they are swapped there.
//
// A reset or cycle of a machine that is off powers it on. Both ask for a
// fresh boot (central raises them with "next boot PXE" when a machine is
// freed, reinstalled or stuck), and a machine that is off needs just the
// power-on for that; BMCs refuse the reset instead (bmclib's Redfish
// provider: "not supported in present state: Off") or ignore it (IPMI's
// chassis reset and cycle do nothing in S5), which would leave a freed
// machine off until someone powers it on by hand.
func (b *Bmclib) Power(ctx context.Context, ep Endpoint, c Creds, a agentv1.BmcPowerAction) error {
	state, ok := map[agentv1.BmcPowerAction]string{
		agentv1.BmcPowerAction_BMC_POWER_ACTION_ON:    "on",
		agentv1.BmcPowerAction_BMC_POWER_ACTION_OFF:   "off",
		agentv1.BmcPowerAction_BMC_POWER_ACTION_RESET: "reset",
		agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE: "cycle",
	}[a]
	if !ok {
		return fmt.Errorf("power action %v: unknown", a)
	}
	if !ep.ipmi() {
		switch state {
		case "reset":
			state = "cycle"
		case "cycle":
			state = "reset"
		}
	}
	restart := a == agentv1.BmcPowerAction_BMC_POWER_ACTION_RESET || a == agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE
	return b.with(ctx, ep, c, func(ctx context.Context, cl *bmclib.Client) error {
		state := state
		if restart {
			// A state that cannot be read leaves the action as asked: the
			// BMC's own answer to it is the better error.
			if st, err := cl.GetPowerState(ctx); err == nil && isOff(st) {
				state = "on"
			}
		}
		done, err := cl.SetPowerState(ctx, state)
		if err != nil {
			return fmt.Errorf("power %s: %w", state, errors.New(clean(err.Error())))
		}
		if !done {
			return fmt.Errorf("power %s: the BMC did not confirm", state)
		}
		return nil
	})
}

// Boot sets the boot device, for the next boot only or (persistent)
// from now on, for UEFI first; bmclib's Redfish provider retries without
// the mode when the BMC refuses it.
func (b *Bmclib) Boot(ctx context.Context, ep Endpoint, c Creds, d agentv1.BmcBootDevice, persistent bool) error {
	dev, ok := map[agentv1.BmcBootDevice]string{
		agentv1.BmcBootDevice_BMC_BOOT_DEVICE_PXE:  "pxe",
		agentv1.BmcBootDevice_BMC_BOOT_DEVICE_DISK: "disk",
		agentv1.BmcBootDevice_BMC_BOOT_DEVICE_BIOS: "bios",
	}[d]
	if !ok {
		return fmt.Errorf("boot device %v: unknown", d)
	}
	return b.with(ctx, ep, c, func(ctx context.Context, cl *bmclib.Client) error {
		done, err := cl.SetBootDevice(ctx, dev, persistent, true)
		if err != nil {
			return fmt.Errorf("boot %s: %w", dev, errors.New(clean(err.Error())))
		}
		if !done {
			return fmt.Errorf("boot %s: the BMC did not confirm", dev)
		}
		return nil
	})
}

// Firmware installs an image through bmclib's FirmwareInstall. bmclib
// v2.3.5's generic providers (gofish, ipmitool) cannot install firmware;
// only vendor providers can, which this driver does not register, so the
// error says so rather than pretending.
func (b *Bmclib) Firmware(ctx context.Context, ep Endpoint, c Creds, comp agentv1.BmcFirmwareComponent, image io.ReadSeeker) error {
	name, ok := map[agentv1.BmcFirmwareComponent]string{
		agentv1.BmcFirmwareComponent_BMC_FIRMWARE_COMPONENT_BIOS: "bios",
		agentv1.BmcFirmwareComponent_BMC_FIRMWARE_COMPONENT_BMC:  "bmc",
	}[comp]
	if !ok {
		return fmt.Errorf("firmware component %v: unknown", comp)
	}
	return b.with(ctx, ep, c, func(ctx context.Context, cl *bmclib.Client) error {
		if _, err := cl.FirmwareInstall(ctx, name, "OnReset", false, image); err != nil {
			if errors.Is(err, bmclibErrs.ErrProviderImplementation) {
				return fmt.Errorf("firmware %s: %w (bmclib v2.3.5 installs firmware only through vendor providers): %s", name, ErrUnsupported, clean(err.Error()))
			}
			return fmt.Errorf("firmware %s: %w", name, errors.New(clean(err.Error())))
		}
		return nil
	})
}

// isOff reads the power state bmclib returns: Redfish's PowerState
// ("Off") or ipmitool's "Chassis Power is off".
func isOff(state string) bool {
	s := strings.ToLower(strings.TrimSpace(state))
	return s == "off" || strings.HasSuffix(s, " is off")
}
