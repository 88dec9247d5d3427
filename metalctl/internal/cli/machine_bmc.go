package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// The out-of-band commands: each raises one of the machine's BMC intents
// to a new generation, which the partition's metal-bmc executes once
// (docs/bmc.md); the result shows in "machine describe" (bmc_results) and
// "machine logs".

// bmcChoice is one sub-command word and what it asks for.
type bmcChoice[T any] struct {
	word, short string
	value       T
}

func (a *app) machineBMCCommands(r resource[*apiv1.Machine]) []*cobra.Command {
	power := &cobra.Command{Use: "power", Short: "Power a machine on or off, reset or power-cycle it through its BMC"}
	for _, c := range []bmcChoice[agentv1.BmcPowerAction]{
		{"on", "Power the machine on", agentv1.BmcPowerAction_BMC_POWER_ACTION_ON},
		{"off", "Power the machine off (hard)", agentv1.BmcPowerAction_BMC_POWER_ACTION_OFF},
		{"reset", "Reset the running machine (hard)", agentv1.BmcPowerAction_BMC_POWER_ACTION_RESET},
		{"cycle", "Power the machine off, then on", agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE},
	} {
		power.AddCommand(a.bmcCommand(r, c.word, c.short, func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Machine, error) {
			resp, err := apiv1.NewMachineServiceClient(cc).Power(ctx, &apiv1.MachineServicePowerRequest{Id: id, Action: c.value})
			return resp.GetMachine(), err
		}))
	}
	boot := &cobra.Command{Use: "boot", Short: "Set the device of a machine's next boot through its BMC"}
	for _, c := range []bmcChoice[agentv1.BmcBootDevice]{
		{"pxe", "Boot from the network next", agentv1.BmcBootDevice_BMC_BOOT_DEVICE_PXE},
		{"disk", "Boot from disk next", agentv1.BmcBootDevice_BMC_BOOT_DEVICE_DISK},
		{"bios", "Boot into the firmware's setup next", agentv1.BmcBootDevice_BMC_BOOT_DEVICE_BIOS},
	} {
		boot.AddCommand(a.bmcCommand(r, c.word, c.short, func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Machine, error) {
			resp, err := apiv1.NewMachineServiceClient(cc).Boot(ctx, &apiv1.MachineServiceBootRequest{Id: id, Device: c.value})
			return resp.GetMachine(), err
		}))
	}
	identify := &cobra.Command{Use: "identify", Short: "Switch a machine's identify LED on or off"}
	for _, c := range []bmcChoice[bool]{{"on", "Switch the identify LED on", true}, {"off", "Switch the identify LED off", false}} {
		identify.AddCommand(a.bmcCommand(r, c.word, c.short, func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Machine, error) {
			resp, err := apiv1.NewMachineServiceClient(cc).Identify(ctx, &apiv1.MachineServiceIdentifyRequest{Id: id, On: c.value})
			return resp.GetMachine(), err
		}))
	}
	var fwURL, fwSum string
	firmware := &cobra.Command{
		Use:     "update-firmware bios|bmc ID --url URL",
		Short:   "Install BIOS or BMC firmware from a URL through the machine's BMC",
		Example: `  metalctl machine update-firmware bios 4c4c4544-0042-3510-8052-b4c04f4d3232 --url https://fw.example/bios-2.1.bin`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var comp agentv1.BmcFirmwareComponent
			switch strings.ToLower(args[0]) {
			case "bios":
				comp = agentv1.BmcFirmwareComponent_BMC_FIRMWARE_COMPONENT_BIOS
			case "bmc":
				comp = agentv1.BmcFirmwareComponent_BMC_FIRMWARE_COMPONENT_BMC
			default:
				return fmt.Errorf("component %q: want bios or bmc", args[0])
			}
			if fwURL == "" {
				return fmt.Errorf("--url is required")
			}
			return printCall(a, cmd, r.cols, func(ctx context.Context, cc grpc.ClientConnInterface) (*apiv1.Machine, error) {
				resp, err := apiv1.NewMachineServiceClient(cc).UpdateFirmware(ctx, &apiv1.MachineServiceUpdateFirmwareRequest{
					Id: args[1], Component: comp, Url: fwURL, Sha256: fwSum})
				return resp.GetMachine(), err
			})
		},
	}
	firmware.Flags().StringVar(&fwURL, "url", "", "http(s) URL of the firmware image")
	firmware.Flags().StringVar(&fwSum, "sha256", "", "sha256 of the image (lower-case hex); a mismatch fails before the BMC is asked")
	return []*cobra.Command{power, boot, identify, firmware}
}

// bmcCommand is "WORD ID": one intent call, printing the machine.
func (a *app) bmcCommand(r resource[*apiv1.Machine], word, short string, call func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Machine, error)) *cobra.Command {
	return &cobra.Command{
		Use:   word + " ID",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return printCall(a, cmd, r.cols, func(ctx context.Context, cc grpc.ClientConnInterface) (*apiv1.Machine, error) {
				return call(ctx, cc, args[0])
			})
		},
	}
}
