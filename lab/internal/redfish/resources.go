package redfish

import (
	"context"
	"net/http"
	"time"

	"github.com/metalfleet/metalfleet/lab/internal/vm"
)

// What the lab's BMCs say a machine is: the Redfish system and chassis,
// and the IPMI BMC's FRU (lab/internal/ipmi), so that metal-bmc reports
// the same facts whichever protocol a machine's BMC speaks.
const (
	Manufacturer = "Metalfleet"
	Model        = "QEMU lab machine"
)

type odataID struct {
	ID string `json:"@odata.id"`
}

func link(path string) odataID { return odataID{path} }

func collection(path, typ, name string, members ...string) map[string]any {
	ms := make([]odataID, 0, len(members))
	for _, m := range members {
		ms = append(ms, link(m))
	}
	return map[string]any{
		"@odata.id":           path,
		"@odata.type":         typ,
		"Name":                name,
		"Members":             ms,
		"Members@odata.count": len(ms),
	}
}

func okStatus() map[string]string { return map[string]string{"State": "Enabled", "Health": "OK"} }

func (s *Server) getRoot(w http.ResponseWriter, _ *http.Request) {
	s.writeJSON(w, http.StatusOK, map[string]any{
		"@odata.id":      rootPath,
		"@odata.type":    "#ServiceRoot.v1_5_0.ServiceRoot",
		"Id":             "RootService",
		"Name":           "Root Service",
		"RedfishVersion": "1.6.0",
		"UUID":           s.serviceUUID,
		"Vendor":         "Metalfleet",
		"Product":        "metal-lab BMC",
		"Systems":        link(systemsPath),
		"Managers":       link(managersPath),
		"Chassis":        link(chassisPath),
		"SessionService": link(sessionServicePath),
		"Links":          map[string]any{"Sessions": link(sessionsPath)},
	})
}

func (s *Server) getSystems(w http.ResponseWriter, _ *http.Request) {
	s.writeJSON(w, http.StatusOK, collection(systemsPath, "#ComputerSystemCollection.ComputerSystemCollection", "Computer System Collection", s.systemPath()))
}

// resetTypes are the ResetType values the system accepts. Nmi has no
// QEMU counterpart worth offering; ForceOn and PushPowerButton are left
// out as bmclib does not send them.
func resetTypes() []string {
	return []string{"On", "ForceOff", "GracefulShutdown", "ForceRestart", "GracefulRestart", "PowerCycle"}
}

// bootTargets maps Redfish override targets to the machine's boot devices.
func bootTargets() map[string]vm.BootDevice {
	return map[string]vm.BootDevice{"None": vm.BootDefault, "Pxe": vm.BootPXE, "Hdd": vm.BootDisk}
}

func targetName(d vm.BootDevice) string {
	for k, v := range bootTargets() {
		if v == d {
			return k
		}
	}
	return "None"
}

// bootOverride is the system's Boot property as Redfish sees the
// machine's override.
func (s *Server) bootOverride() (enabled, target string) {
	dev, persistent := s.sys.BootDevice()
	switch {
	case dev == vm.BootDefault:
		return "Disabled", "None"
	case persistent:
		return "Continuous", targetName(dev)
	}
	return "Once", targetName(dev)
}

// powerState asks the machine, bounded: a wedged QEMU must not hang
// every GET of the system.
func (s *Server) powerState(r *http.Request) (vm.PowerState, error) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	return s.sys.PowerState(ctx)
}

func (s *Server) systemDoc(ps vm.PowerState) map[string]any {
	enabled, target := s.bootOverride()
	return map[string]any{
		"@odata.id":                            s.systemPath(),
		"@odata.type":                          "#ComputerSystem.v1_13_0.ComputerSystem",
		"Id":                                   s.cfg.ID,
		"Name":                                 s.cfg.Name,
		"SystemType":                           "Physical",
		"UUID":                                 s.cfg.UUID,
		"Manufacturer":                         Manufacturer,
		"Model":                                Model,
		"SerialNumber":                         s.cfg.SerialNumber,
		"PowerState":                           string(ps),
		"Status":                               okStatus(),
		"BiosVersion":                          s.cfg.BIOSVersion,
		"IndicatorLED":                         s.indicatorLED(),
		"IndicatorLED@Redfish.AllowableValues": ledValues(),
		"Bios":                                 link(s.biosPath()),
		"Boot": map[string]any{
			"BootSourceOverrideEnabled":                        enabled,
			"BootSourceOverrideTarget":                         target,
			"BootSourceOverrideTarget@Redfish.AllowableValues": []string{"None", "Pxe", "Hdd"},
			"BootSourceOverrideMode":                           s.cfg.BootMode,
			"BootSourceOverrideMode@Redfish.AllowableValues":   []string{s.cfg.BootMode},
		},
		"Links": map[string]any{
			"Chassis":   []odataID{link(s.chassisPath())},
			"ManagedBy": []odataID{link(s.managerPath())},
		},
		"Actions": map[string]any{
			"#ComputerSystem.Reset": map[string]any{
				"target":                            s.resetPath(),
				"ResetType@Redfish.AllowableValues": resetTypes(),
			},
		},
	}
}

func (s *Server) getSystem(w http.ResponseWriter, r *http.Request) {
	ps, err := s.powerState(r)
	if err != nil {
		s.log.Error("power state", "err", err)
		s.fail(w, http.StatusInternalServerError, internalError(err))
		return
	}
	s.writeJSON(w, http.StatusOK, s.systemDoc(ps))
}

func (s *Server) getManagers(w http.ResponseWriter, _ *http.Request) {
	s.writeJSON(w, http.StatusOK, collection(managersPath, "#ManagerCollection.ManagerCollection", "Manager Collection", s.managerPath()))
}

func (s *Server) getManager(w http.ResponseWriter, _ *http.Request) {
	s.writeJSON(w, http.StatusOK, map[string]any{
		"@odata.id":       s.managerPath(),
		"@odata.type":     "#Manager.v1_10_0.Manager",
		"Id":              managerID,
		"Name":            "metal-lab BMC",
		"ManagerType":     "BMC",
		"Manufacturer":    "Metalfleet",
		"Model":           "metal-lab Redfish BMC",
		"FirmwareVersion": s.cfg.BMCVersion,
		"UUID":            s.serviceUUID,
		"PowerState":      "On",
		"Status":          okStatus(),
		"NetworkProtocol": link(s.networkProtocolPath()),
		"Links": map[string]any{
			"ManagerForServers": []odataID{link(s.systemPath())},
			"ManagerForChassis": []odataID{link(s.chassisPath())},
		},
	})
}

// getNetworkProtocol says which services the BMC offers: HTTPS (this
// Redfish) and, when it has one, the SSH serial console with its port.
func (s *Server) getNetworkProtocol(w http.ResponseWriter, _ *http.Request) {
	s.writeJSON(w, http.StatusOK, map[string]any{
		"@odata.id":   s.networkProtocolPath(),
		"@odata.type": "#ManagerNetworkProtocol.v1_5_0.ManagerNetworkProtocol",
		"Id":          "NetworkProtocol",
		"Name":        "Manager Network Protocol",
		"Status":      okStatus(),
		"HTTPS":       map[string]any{"ProtocolEnabled": true},
		"SSH":         map[string]any{"ProtocolEnabled": s.cfg.SSHPort > 0, "Port": s.cfg.SSHPort},
		"IPMI":        map[string]any{"ProtocolEnabled": false},
	})
}

func (s *Server) getChassisCollection(w http.ResponseWriter, _ *http.Request) {
	s.writeJSON(w, http.StatusOK, collection(chassisPath, "#ChassisCollection.ChassisCollection", "Chassis Collection", s.chassisPath()))
}

func (s *Server) getChassis(w http.ResponseWriter, r *http.Request) {
	ps, err := s.powerState(r)
	if err != nil {
		s.fail(w, http.StatusInternalServerError, internalError(err))
		return
	}
	s.writeJSON(w, http.StatusOK, map[string]any{
		"@odata.id":    s.chassisPath(),
		"@odata.type":  "#Chassis.v1_14_0.Chassis",
		"Id":           s.cfg.ID,
		"Name":         s.cfg.Name,
		"ChassisType":  "RackMount",
		"Manufacturer": Manufacturer,
		"Model":        Model,
		"SerialNumber": s.cfg.SerialNumber,
		"PowerState":   string(ps),
		"Status":       okStatus(),
		"Power":        link(s.powerPath()),
		"Links": map[string]any{
			"ComputerSystems": []odataID{link(s.systemPath())},
			"ManagedBy":       []odataID{link(s.managerPath())},
		},
	})
}

// ledValues are the IndicatorLED values the system accepts.
func ledValues() []string { return []string{"Off", "Lit", "Blinking"} }

func (s *Server) indicatorLED() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.led
}

// getBios serves the system's BIOS resource: its version and the one
// attribute a QEMU machine has, the firmware's boot mode.
func (s *Server) getBios(w http.ResponseWriter, _ *http.Request) {
	s.writeJSON(w, http.StatusOK, map[string]any{
		"@odata.id":         s.biosPath(),
		"@odata.type":       "#Bios.v1_1_0.Bios",
		"Id":                "Bios",
		"Name":              "BIOS Configuration",
		"Description":       s.cfg.BIOSVersion,
		"AttributeRegistry": "MetalLabBiosAttributeRegistry.v1_0_0",
		"Attributes":        map[string]any{"BootMode": s.cfg.BootMode},
	})
}

// Power draw the chassis reports: a running machine draws more than one
// that is off (the BMC itself still draws), so the number follows the
// power state as a real one would.
const (
	wattsOn  = 180
	wattsOff = 12
	psuWatts = 800
)

// getPower serves the chassis' Power: the draw and two healthy PSUs.
func (s *Server) getPower(w http.ResponseWriter, r *http.Request) {
	ps, err := s.powerState(r)
	if err != nil {
		s.fail(w, http.StatusInternalServerError, internalError(err))
		return
	}
	watts := wattsOff
	if ps == vm.On {
		watts = wattsOn
	}
	psu := func(id string) map[string]any {
		return map[string]any{
			"@odata.id":          s.powerPath() + "#/PowerSupplies/" + id,
			"MemberId":           id,
			"Name":               "PSU" + id,
			"Manufacturer":       "Metalfleet",
			"Model":              "metal-lab PSU",
			"PowerCapacityWatts": psuWatts,
			"Status":             okStatus(),
		}
	}
	s.writeJSON(w, http.StatusOK, map[string]any{
		"@odata.id":   s.powerPath(),
		"@odata.type": "#Power.v1_5_0.Power",
		"Id":          "Power",
		"Name":        "Power",
		"PowerControl": []map[string]any{{
			"@odata.id":          s.powerPath() + "#/PowerControl/0",
			"MemberId":           "0",
			"Name":               "System Power Control",
			"PowerConsumedWatts": watts,
			"Status":             okStatus(),
		}},
		"PowerSupplies": []map[string]any{psu("0"), psu("1")},
	})
}
