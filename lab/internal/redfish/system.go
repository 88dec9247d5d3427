package redfish

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"

	"github.com/metalfleet/metalfleet/lab/internal/vm"
)

// readObject reads a JSON object body. On failure it has answered.
func (s *Server) readObject(w http.ResponseWriter, r *http.Request) (map[string]json.RawMessage, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			s.fail(w, http.StatusRequestEntityTooLarge, msg("GeneralError", fmt.Sprintf("The request body is larger than %d bytes.", maxBody), "Send a smaller body."))
		} else {
			s.fail(w, http.StatusBadRequest, msg("MalformedJSON", "The request body could not be read: "+err.Error()+".", "Resubmit the request."))
		}
		return nil, false
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(b, &obj); err != nil || obj == nil {
		why := "it is not a JSON object"
		if err != nil {
			why = err.Error()
		}
		s.fail(w, http.StatusBadRequest, msg("MalformedJSON", "The request body submitted was malformed JSON and could not be parsed by the receiving service: "+why+".",
			"Ensure that the request body is valid JSON and resubmit the request."))
		return nil, false
	}
	return obj, true
}

func sortedKeys(m map[string]json.RawMessage) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// stringValue decodes a string property; it reports a type error.
func stringValue(raw json.RawMessage, prop string) (string, *message) {
	var v string
	if err := json.Unmarshal(raw, &v); err != nil {
		m := msg("PropertyValueTypeError", fmt.Sprintf("The value %s for the property %s is of a different type than the property can accept: want a string.", raw, prop),
			"Correct the value for the property in the request body and resubmit the request if the operation failed.", string(raw), prop).related("#/" + prop)
		return "", &m
	}
	return v, nil
}

func notInList(prop, value string, allowed []string, why string) message {
	return msg("PropertyValueNotInList", fmt.Sprintf("The value %s for the property %s is not in the list of acceptable values (%s)%s.", value, prop, strings.Join(allowed, ", "), why),
		"Choose a value from the enumeration list that the implementation can support and resubmit the request if the operation failed.", value, prop).related("#/" + prop)
}

// systemReadOnly are the ComputerSystem properties we serve but do not
// let clients change.
func systemReadOnly() []string {
	return []string{"Id", "Name", "SystemType", "UUID", "Manufacturer", "Model", "SerialNumber", "PowerState", "Status", "Links", "Actions", "BiosVersion", "Bios"}
}

// patchSystem changes the boot override: Boot.BootSourceOverrideEnabled
// (Disabled, Once, Continuous), Boot.BootSourceOverrideTarget (None,
// Pxe, Hdd) and Boot.BootSourceOverrideMode (only the firmware's), and
// the identify LED, IndicatorLED (Off, Lit, Blinking). A request with any
// refused property changes nothing.
func (s *Server) patchSystem(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readObject(w, r)
	if !ok {
		return
	}
	var errs []message
	var bootRaw json.RawMessage
	led := ""
	for _, k := range sortedKeys(body) {
		switch {
		case k == "Boot":
			bootRaw = body[k]
		case k == "IndicatorLED":
			v, bad := stringValue(body[k], k)
			switch {
			case bad != nil:
				errs = append(errs, *bad)
			case !slices.Contains(ledValues(), v):
				errs = append(errs, notInList(k, v, ledValues(), ""))
			default:
				led = v
			}
		case strings.HasPrefix(k, "@odata."):
			// Clients echo annotations back; they change nothing.
		case slices.Contains(systemReadOnly(), k):
			errs = append(errs, msg("PropertyNotWritable", fmt.Sprintf("The property %s is a read only property and cannot be assigned a value.", k),
				"Remove the property from the request body and resubmit the request if the operation failed.", k).related("#/"+k))
		default:
			errs = append(errs, msg("PropertyUnknown", fmt.Sprintf("The property %s is not in the list of valid properties for the resource (this BMC can change Boot and IndicatorLED only).", k),
				"Remove the unknown property from the request body and resubmit the request if the operation failed.", k).related("#/"+k))
		}
	}
	if bootRaw == nil && led == "" && len(errs) == 0 {
		errs = append(errs, msg("EmptyJSON", "The request body submitted contained no property this BMC can change; it can change Boot and IndicatorLED.",
			"Add properties in the JSON object and resubmit the request."))
	}
	var given map[string]string
	if bootRaw != nil {
		var m []message
		given, m = parseBoot(bootRaw, s.cfg.BootMode)
		errs = append(errs, m...)
	}
	if len(errs) > 0 {
		s.fail(w, http.StatusBadRequest, errs...)
		return
	}
	if led != "" {
		s.mu.Lock()
		s.led = led
		s.mu.Unlock()
		s.log.Info("indicator LED", "state", led, "remote", r.RemoteAddr)
	}
	if bootRaw == nil {
		s.getSystem(w, r)
		return
	}

	curEnabled, curTarget := s.bootOverride()
	enabled, eGiven := given["BootSourceOverrideEnabled"]
	target, tGiven := given["BootSourceOverrideTarget"]
	if !eGiven {
		enabled = curEnabled
	}
	if !tGiven {
		target = curTarget
	}
	var dev vm.BootDevice
	persistent := false
	switch {
	case enabled == "Disabled" && eGiven:
		dev = vm.BootDefault
	case target == "None":
		if eGiven {
			s.fail(w, http.StatusBadRequest, msg("PropertyValueConflict",
				fmt.Sprintf("The property BootSourceOverrideEnabled could not be set to %s because the property BootSourceOverrideTarget is None: an override needs a target (Pxe or Hdd).", enabled),
				"Set BootSourceOverrideTarget to Pxe or Hdd in the same request.", "BootSourceOverrideEnabled", "BootSourceOverrideTarget").related("#/Boot/BootSourceOverrideEnabled", "#/Boot/BootSourceOverrideTarget"))
			return
		}
		dev = vm.BootDefault
	default:
		// A target alone while the override is disabled means once, as
		// most BMCs read it.
		dev, persistent = bootTargets()[target], enabled == "Continuous"
	}
	if err := s.sys.SetBootDevice(dev, persistent); err != nil {
		s.fail(w, http.StatusInternalServerError, internalError(err))
		return
	}
	e, t := s.bootOverride()
	s.log.Info("boot override", "enabled", e, "target", t, "remote", r.RemoteAddr)
	s.getSystem(w, r)
}

// parseBoot checks a PATCH's Boot object; it returns the properties
// given (as strings) or what is wrong with them.
func parseBoot(raw json.RawMessage, mode string) (map[string]string, []message) {
	var boot map[string]json.RawMessage
	if err := json.Unmarshal(raw, &boot); err != nil || boot == nil {
		return nil, []message{msg("PropertyValueTypeError", fmt.Sprintf("The value %s for the property Boot is of a different type than the property can accept: want an object.", raw),
			"Correct the value for the property in the request body and resubmit the request if the operation failed.", string(raw), "Boot").related("#/Boot")}
	}
	allowed := map[string][]string{
		"BootSourceOverrideEnabled": {"Disabled", "Once", "Continuous"},
		"BootSourceOverrideTarget":  {"None", "Pxe", "Hdd"},
		"BootSourceOverrideMode":    {mode},
	}
	given := map[string]string{}
	var errs []message
	for _, k := range sortedKeys(boot) {
		prop := "Boot/" + k
		list, ok := allowed[k]
		if !ok {
			if strings.HasPrefix(k, "@odata.") {
				continue
			}
			errs = append(errs, msg("PropertyUnknown", fmt.Sprintf("The property %s is not in the list of valid properties for the resource (this BMC can change BootSourceOverrideEnabled, BootSourceOverrideTarget and BootSourceOverrideMode).", prop),
				"Remove the unknown property from the request body and resubmit the request if the operation failed.", prop).related("#/"+prop))
			continue
		}
		v, bad := stringValue(boot[k], prop)
		if bad != nil {
			errs = append(errs, *bad)
			continue
		}
		if !slices.Contains(list, v) {
			why := ""
			switch k {
			case "BootSourceOverrideTarget":
				why = ": this machine boots only from its network or its disk"
			case "BootSourceOverrideMode":
				why = ": the machine's firmware is " + mode + " and cannot be switched"
			}
			errs = append(errs, notInList(prop, v, list, why))
			continue
		}
		given[k] = v
	}
	return given, errs
}

// postReset runs #ComputerSystem.Reset.
func (s *Server) postReset(w http.ResponseWriter, r *http.Request) {
	const action = "ComputerSystem.Reset"
	body, ok := s.readObject(w, r)
	if !ok {
		return
	}
	var errs []message
	for _, k := range sortedKeys(body) {
		if k != "ResetType" && !strings.HasPrefix(k, "@") {
			errs = append(errs, msg("ActionParameterUnknown", fmt.Sprintf("The action %s was submitted with the invalid parameter %s.", action, k),
				"Correct the invalid parameter and resubmit the request if the operation failed.", action, k).related("#/"+k))
		}
	}
	raw, ok := body["ResetType"]
	var rt string
	switch {
	case !ok:
		errs = append(errs, msg("ActionParameterMissing", fmt.Sprintf("The action %s requires the parameter ResetType to be present in the request body.", action),
			"Supply the action with the required parameter in the request body when the request is resubmitted.", action, "ResetType").related("#/ResetType"))
	default:
		if err := json.Unmarshal(raw, &rt); err != nil {
			errs = append(errs, msg("ActionParameterValueTypeError", fmt.Sprintf("The value %s for the parameter ResetType in the action %s is of a different type than the parameter can accept: want a string.", raw, action),
				"Correct the value for the parameter in the request body and resubmit the request if the operation failed.", string(raw), "ResetType", action).related("#/ResetType"))
		} else if !slices.Contains(resetTypes(), rt) {
			errs = append(errs, msg("ActionParameterValueNotInList", fmt.Sprintf("The value %s for the parameter ResetType in the action %s is not in the list of acceptable values (%s).", rt, action, strings.Join(resetTypes(), ", ")),
				"Choose a value from the enumeration list that the implementation can support and resubmit the request if the operation failed.", rt, "ResetType", action).related("#/ResetType"))
		}
	}
	if len(errs) > 0 {
		s.fail(w, http.StatusBadRequest, errs...)
		return
	}

	s.log.Info("reset", "type", rt, "remote", r.RemoteAddr)
	// The action must finish even when the client hangs up: a power-on
	// cut short would kill the QEMU it just started.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), actionTimeout)
	defer cancel()
	var err error
	async := false // counted when it ends
	switch rt {
	case "On":
		err = s.sys.PowerOn(ctx)
	case "ForceOff":
		err = s.sys.PowerOff(ctx, false)
	case "ForceRestart":
		err = s.sys.Reset(ctx)
	case "PowerCycle":
		err = s.sys.PowerCycle(ctx)
	case "GracefulShutdown":
		// A guest may take minutes to shut down; like a real BMC, answer
		// now and let the machine's bounded shutdown run.
		async = true
		s.background(rt, func(ctx context.Context) error { return s.sys.PowerOff(ctx, true) })
	case "GracefulRestart":
		var ps vm.PowerState
		if ps, err = s.sys.PowerState(ctx); err == nil && ps == vm.Off {
			err = vm.ErrPoweredOff
		}
		if err == nil {
			async = true
			s.background(rt, func(ctx context.Context) error {
				if err := s.sys.PowerOff(ctx, true); err != nil {
					return err
				}
				return s.sys.PowerOn(ctx)
			})
		}
	}
	if !async {
		s.metrics.powerAction(rt, err)
	}
	switch {
	case errors.Is(err, vm.ErrPoweredOff):
		s.fail(w, http.StatusConflict, msg("ActionNotSupported", fmt.Sprintf("The action %s with ResetType %s is not supported while the system is powered off; use On.", action, rt),
			"Power the system on first.", action).related("#/ResetType"))
	case err != nil:
		s.log.Error("reset", "type", rt, "err", err)
		s.fail(w, http.StatusInternalServerError, internalError(err))
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

// background runs a graceful action after the response; Close cuts it
// short, which forces the machine.
func (s *Server) background(action string, f func(context.Context) error) {
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		err := f(s.bgCtx)
		s.metrics.powerAction(action, err)
		if err != nil {
			s.log.Error("reset", "type", action, "err", err)
		} else {
			s.log.Info("reset done", "type", action)
		}
	}()
}
