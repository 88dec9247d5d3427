package service

import (
	"context"
	"net/url"
	"strings"

	"github.com/metalfleet/metalfleet/central/internal/bmc"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// The machine service's BMC intents: each raises one intent of the
// machine to a new generation, which the partition's metal-bmc executes
// once (docs/bmc.md). The answer is the machine and the generation.

const maxFirmwareURL = 2048

func (s *machineService) raise(ctx context.Context, id string, in bmc.Intent) (*apiv1.Machine, *agentv1.BmcMachine, error) {
	var docs bmc.Docs
	if s.fleet != nil {
		docs = s.fleet
	}
	got, err := bmc.RaiseFor(ctx, s.store, docs, id, in)
	if err != nil {
		return nil, nil, toStatus(err, "machine "+quote(id))
	}
	m, err := s.readMachine(ctx, s.store.Pool(), id)
	if err != nil {
		return nil, nil, err
	}
	return m, got, nil
}

func (s *machineService) Power(ctx context.Context, req *apiv1.MachineServicePowerRequest) (*apiv1.MachineServicePowerResponse, error) {
	var v violations
	v.id("id", req.GetId())
	if a := req.GetAction(); a <= agentv1.BmcPowerAction_BMC_POWER_ACTION_UNSPECIFIED || a > agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE {
		v.add("action", "must be on, off, reset or cycle")
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	m, got, err := s.raise(ctx, req.GetId(), bmc.Intent{Power: &agentv1.BmcPowerIntent{Action: req.GetAction()}})
	if err != nil {
		return nil, err
	}
	return &apiv1.MachineServicePowerResponse{Machine: m, Generation: got.GetPower().GetGeneration()}, nil
}

func (s *machineService) Boot(ctx context.Context, req *apiv1.MachineServiceBootRequest) (*apiv1.MachineServiceBootResponse, error) {
	var v violations
	v.id("id", req.GetId())
	if d := req.GetDevice(); d <= agentv1.BmcBootDevice_BMC_BOOT_DEVICE_UNSPECIFIED || d > agentv1.BmcBootDevice_BMC_BOOT_DEVICE_BIOS {
		v.add("device", "must be pxe, disk or bios")
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	m, got, err := s.raise(ctx, req.GetId(), bmc.Intent{Boot: &agentv1.BmcBootIntent{Device: req.GetDevice()}})
	if err != nil {
		return nil, err
	}
	return &apiv1.MachineServiceBootResponse{Machine: m, Generation: got.GetBoot().GetGeneration()}, nil
}

func (s *machineService) Identify(ctx context.Context, req *apiv1.MachineServiceIdentifyRequest) (*apiv1.MachineServiceIdentifyResponse, error) {
	var v violations
	v.id("id", req.GetId())
	if err := v.err(); err != nil {
		return nil, err
	}
	m, got, err := s.raise(ctx, req.GetId(), bmc.Intent{Identify: &agentv1.BmcIdentifyIntent{On: req.GetOn()}})
	if err != nil {
		return nil, err
	}
	return &apiv1.MachineServiceIdentifyResponse{Machine: m, Generation: got.GetIdentify().GetGeneration()}, nil
}

func (s *machineService) UpdateFirmware(ctx context.Context, req *apiv1.MachineServiceUpdateFirmwareRequest) (*apiv1.MachineServiceUpdateFirmwareResponse, error) {
	var v violations
	v.id("id", req.GetId())
	if c := req.GetComponent(); c <= agentv1.BmcFirmwareComponent_BMC_FIRMWARE_COMPONENT_UNSPECIFIED || c > agentv1.BmcFirmwareComponent_BMC_FIRMWARE_COMPONENT_BMC {
		v.add("component", "must be bios or bmc")
	}
	if msg := badFirmwareURL(req.GetUrl()); msg != "" {
		v.add("url", "%s", msg)
	}
	if sum := req.GetSha256(); sum != "" && (len(sum) != 64 || strings.Trim(sum, "0123456789abcdef") != "") {
		v.add("sha256", "want 64 lower-case hex digits")
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	m, got, err := s.raise(ctx, req.GetId(), bmc.Intent{Firmware: &agentv1.BmcFirmwareIntent{Component: req.GetComponent(), Url: req.GetUrl(), Sha256: req.GetSha256()}})
	if err != nil {
		return nil, err
	}
	return &apiv1.MachineServiceUpdateFirmwareResponse{Machine: m, Generation: got.GetFirmware().GetGeneration()}, nil
}

// badFirmwareURL says what is wrong with a firmware image's URL ("" when
// nothing): metal-bmc downloads http(s) URLs without credentials in them.
func badFirmwareURL(s string) string {
	switch {
	case s == "":
		return "required"
	case len(s) > maxFirmwareURL:
		return "longer than 2048 bytes"
	case strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		return "holds a space or control character"
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return "not a URL"
	case u.Scheme != "http" && u.Scheme != "https":
		return "must be http or https"
	case u.Host == "":
		return "no host"
	case u.User != nil:
		return "must not carry credentials"
	}
	return ""
}
