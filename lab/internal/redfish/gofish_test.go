package redfish

import (
	"context"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stmcginnis/gofish"
	"github.com/stmcginnis/gofish/redfish"

	"github.com/metalfleet/metalfleet/lab/internal/vm"
)

// TestGofish drives the BMC with gofish v0.20.0, the client bmclib's
// redfish provider wraps, the way that provider does.
func TestGofish(t *testing.T) {
	for _, basic := range []bool{false, true} {
		name := map[bool]string{false: "session", true: "basic"}[basic]
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			f := newFake()
			s := newServer(t, f, nil)
			ts := httptest.NewTLSServer(s)
			defer ts.Close()

			if _, err := gofish.ConnectContext(ctx, gofish.ClientConfig{Endpoint: ts.URL, Username: user, Password: "wrong", Insecure: true, BasicAuth: basic}); !basic && err == nil {
				t.Fatal("login with a wrong password succeeded")
			}
			c, err := gofish.ConnectContext(ctx, gofish.ClientConfig{Endpoint: ts.URL, Username: user, Password: pass, Insecure: true, BasicAuth: basic})
			if err != nil {
				t.Fatal(err)
			}
			if c.Service.RedfishVersion != "1.6.0" || c.Service.Vendor != "Metalfleet" {
				t.Errorf("service root = %+v", c.Service)
			}
			if !basic {
				// bmclib's SessionActive needs the session's URI.
				if sess, err := c.GetSession(); err != nil || sess.ID == "" || sess.Token == "" {
					t.Fatalf("GetSession = %+v, %v", sess, err)
				}
				sessions, err := c.Service.Sessions()
				if err != nil || len(sessions) != 1 || sessions[0].UserName != user {
					t.Fatalf("Sessions = %v, %v", sessions, err)
				}
			}

			systems, err := c.Service.Systems()
			if err != nil || len(systems) != 1 {
				t.Fatalf("Systems = %v, %v", systems, err)
			}
			sys := systems[0]
			if sys.ID != "1" || sys.UUID != "5c1f7a52-3f9e-4bb1-9d55-0d7c2c1a0001" || sys.PowerState != redfish.OffPowerState ||
				sys.Manufacturer != "Metalfleet" || sys.SerialNumber != "SN1" {
				t.Errorf("system = %+v", sys)
			}
			if len(sys.SupportedResetTypes) != len(resetTypes()) {
				t.Errorf("SupportedResetTypes = %v", sys.SupportedResetTypes)
			}

			// Every ResetType, as bmclib sends them (power on, cycle, off...).
			steps := []struct {
				rt   redfish.ResetType
				call []string
			}{
				{redfish.OnResetType, []string{"PowerOn"}},
				{redfish.ForceRestartResetType, []string{"Reset"}},
				{redfish.PowerCycleResetType, []string{"PowerCycle"}},
				{redfish.GracefulRestartResetType, []string{"PowerOff(graceful=true)", "PowerOn"}},
				{redfish.ForceOffResetType, []string{"PowerOff(graceful=false)"}},
				{redfish.OnResetType, []string{"PowerOn"}},
				{redfish.GracefulShutdownResetType, []string{"PowerOff(graceful=true)"}},
			}
			var want []string
			for _, st := range steps {
				if err := sys.Reset(st.rt); err != nil {
					t.Fatalf("Reset(%s): %v", st.rt, err)
				}
				s.bg.Wait() // graceful actions run after the response
				want = append(want, st.call...)
			}
			if _, _, _, calls := f.snapshot(); !slices.Equal(calls, want) {
				t.Errorf("calls = %q\nwant    %q", calls, want)
			}
			// gofish refuses what the system does not offer.
			if err := sys.Reset(redfish.NmiResetType); err == nil {
				t.Error("Reset(Nmi) succeeded")
			}
			// ForceRestart of an off machine is refused by the BMC.
			if err := sys.Reset(redfish.ForceRestartResetType); err == nil {
				t.Error("ForceRestart while off succeeded")
			}

			// The boot override, as bmclib's SystemBootDeviceSet sends it:
			// the whole Boot back with SetBoot (gofish v0.20.0's Update()
			// treats Boot as read-only and never PATCHes it).
			sys, err = redfish.GetComputerSystem(c, sys.ODataID)
			if err != nil {
				t.Fatal(err)
			}
			if sys.PowerState != redfish.OffPowerState {
				t.Errorf("power state after GracefulShutdown = %s", sys.PowerState)
			}
			boot := sys.Boot
			boot.BootSourceOverrideTarget = redfish.PxeBootSourceOverrideTarget
			boot.BootSourceOverrideEnabled = redfish.OnceBootSourceOverrideEnabled
			boot.BootSourceOverrideMode = redfish.UEFIBootSourceOverrideMode
			if err := sys.SetBoot(boot); err != nil {
				t.Fatalf("SetBoot(Once Pxe UEFI): %v", err)
			}
			if _, dev, persistent, _ := f.snapshot(); dev != vm.BootPXE || persistent {
				t.Errorf("boot device = %q persistent %v", dev, persistent)
			}
			// bmclib with efiBoot=false asks for Legacy, is refused, and
			// retries with target and enabled only.
			boot.BootSourceOverrideTarget = redfish.HddBootSourceOverrideTarget
			boot.BootSourceOverrideEnabled = redfish.ContinuousBootSourceOverrideEnabled
			boot.BootSourceOverrideMode = redfish.LegacyBootSourceOverrideMode
			if err := sys.SetBoot(boot); err == nil {
				t.Fatal("SetBoot(Legacy) on a UEFI machine succeeded")
			}
			if err := sys.SetBoot(redfish.Boot{BootSourceOverrideTarget: boot.BootSourceOverrideTarget, BootSourceOverrideEnabled: boot.BootSourceOverrideEnabled}); err != nil {
				t.Fatal(err)
			}
			sys, err = redfish.GetComputerSystem(c, sys.ODataID)
			if err != nil {
				t.Fatal(err)
			}
			if b := sys.Boot; b.BootSourceOverrideEnabled != redfish.ContinuousBootSourceOverrideEnabled ||
				b.BootSourceOverrideTarget != redfish.HddBootSourceOverrideTarget || b.BootSourceOverrideMode != redfish.UEFIBootSourceOverrideMode {
				t.Errorf("boot = %+v", b)
			}

			managers, err := c.Service.Managers()
			if err != nil || len(managers) != 1 || managers[0].ManagerType != redfish.BMCManagerType {
				t.Errorf("Managers = %v, %v", managers, err)
			}
			chassis, err := c.Service.Chassis()
			if err != nil || len(chassis) != 1 || chassis[0].PowerState != redfish.OffPowerState {
				t.Errorf("Chassis = %v, %v", chassis, err)
			}

			c.Logout()
			s.mu.Lock()
			n := len(s.sessions)
			s.mu.Unlock()
			if n != 0 {
				t.Errorf("%d sessions after Logout", n)
			}
		})
	}
}

// TestGofishInventory reads and sets what metal-bmc reports besides
// power: the BIOS and BMC versions, the power draw and PSUs, and the
// identify LED (gofish PATCHes IndicatorLED alone).
func TestGofishInventory(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := newFake()
	s := newServer(t, f, nil)
	ts := httptest.NewTLSServer(s)
	defer ts.Close()
	c, err := gofish.ConnectContext(ctx, gofish.ClientConfig{Endpoint: ts.URL, Username: user, Password: pass, Insecure: true, BasicAuth: true})
	if err != nil {
		t.Fatal(err)
	}
	systems, err := c.Service.Systems()
	if err != nil || len(systems) != 1 {
		t.Fatalf("Systems = %v, %v", systems, err)
	}
	sys := systems[0]
	if sys.BIOSVersion != "metal-lab-bios 1.0" || sys.IndicatorLED != "Off" {
		t.Errorf("BiosVersion %q IndicatorLED %q", sys.BIOSVersion, sys.IndicatorLED)
	}
	bios, err := sys.Bios()
	if err != nil || bios.Attributes["BootMode"] != "UEFI" {
		t.Errorf("Bios = %+v, %v", bios, err)
	}
	sys.IndicatorLED = "Blinking"
	if err := sys.Update(); err != nil {
		t.Fatal(err)
	}
	if sys, err = redfish.GetComputerSystem(c, sys.ODataID); err != nil || sys.IndicatorLED != "Blinking" {
		t.Errorf("IndicatorLED after PATCH = %q, %v", sys.IndicatorLED, err)
	}
	if w := do(s, req{method: "PATCH", path: sys1, body: `{"IndicatorLED":"Disco"}`, auth: "basic"}); w.Code != 400 || !strings.Contains(errorText(t, w), "PropertyValueNotInList") {
		t.Errorf("PATCH IndicatorLED Disco = %d %s", w.Code, w.Body)
	}

	chassis, err := c.Service.Chassis()
	if err != nil || len(chassis) != 1 {
		t.Fatalf("Chassis = %v, %v", chassis, err)
	}
	for _, tc := range []struct {
		on    bool
		watts float32
	}{{false, wattsOff}, {true, wattsOn}} {
		if tc.on {
			if err := sys.Reset(redfish.OnResetType); err != nil {
				t.Fatal(err)
			}
		}
		p, err := chassis[0].Power()
		if err != nil {
			t.Fatal(err)
		}
		if len(p.PowerControl) != 1 || p.PowerControl[0].PowerConsumedWatts != tc.watts || len(p.PowerSupplies) != 2 || p.PowerSupplies[1].Status.Health != "OK" {
			t.Errorf("on=%v: Power = %+v", tc.on, p)
		}
	}
	managers, err := c.Service.Managers()
	if err != nil || len(managers) != 1 || managers[0].FirmwareVersion != "metal-lab" {
		t.Errorf("Managers = %v, %v", managers, err)
	}
}
