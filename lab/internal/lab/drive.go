package lab

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/stmcginnis/gofish/redfish"

	"github.com/metalfleet/metalfleet/lab/internal/client"
	"github.com/metalfleet/metalfleet/lab/internal/topo"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Events that ask for a machine to go back to PXE, and those that show it
// did.
const (
	evReclaim     = "Machine Reclaim" // freed
	evReinstall   = "Reinstall"
	evPlanned     = "Planned Reboot" // metal-phonehome carries it out
	evPXEBooting  = "PXE Booting"
	defaultGrace  = 10 * time.Second
	retryInterval = 2 * time.Second
)

// Drive is the lab's stand-in for metal-bmc: it follows central's events
// of every machine, and when a machine is freed or reinstalled but does
// not reboot by itself within grace (its OS is off or hung, so
// metal-phonehome cannot carry out the reboot), it makes it PXE-boot
// through its BMC: boot override Pxe once, then On or ForceRestart.
func (l *Lab) Drive(ctx context.Context, grace time.Duration) error {
	if grace <= 0 {
		grace = defaultGrace
	}
	cc, err := client.Dial(l.centralAddr(), filepath.Join(l.centralDir(), "ca.crt"), filepath.Join(l.centralDir(), "admin.token"))
	if err != nil {
		return err
	}
	defer cc.Close()
	api := apiv1.NewMachineServiceClient(cc)
	start := time.Now()
	var wg sync.WaitGroup
	for _, m := range l.top.Nodes(topo.KindMachine) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.driveMachine(ctx, api, m, start, grace)
		}()
	}
	wg.Wait()
	return nil
}

// driveMachine follows one machine's events (reconnecting; the log is
// replayed from the start, so events before start are history).
func (l *Lab) driveMachine(ctx context.Context, api apiv1.MachineServiceClient, node string, start time.Time, grace time.Duration) {
	uuid := l.top.Node(node).UUID
	log := l.cfg.Log.With("machine", node, "uuid", uuid)
	var (
		w     rebootWatch
		timer <-chan time.Time
	)
	events := make(chan *apiv1.MachineEvent)
	go func() {
		for ctx.Err() == nil {
			stream, err := api.Events(ctx, &apiv1.MachineServiceEventsRequest{Id: uuid, Follow: true})
			if err == nil {
				for {
					r, err := stream.Recv()
					if err != nil {
						break
					}
					if ev := r.GetEvent(); ev != nil {
						select {
						case events <- ev:
						case <-ctx.Done():
							return
						}
					}
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(retryInterval):
			}
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-events:
			at := ev.GetTime().AsTime()
			if at.Before(start) {
				continue
			}
			switch w.observe(ev.GetEvent(), at) {
			case watchStarted:
				timer = time.After(grace)
				log.Info("reboot asked for; waiting for the machine to reboot itself", "event", ev.GetEvent(), "grace", grace)
			case watchRebooted:
				timer = nil
				log.Info("the machine rebooted by itself", "event", ev.GetEvent(), "after", at.Sub(w.last).Round(time.Millisecond))
			}
		case <-timer:
			timer = nil
			if err := l.pxeBoot(ctx, node); err != nil {
				log.Error("PXE boot through the BMC failed; trying again", "err", err)
				timer = time.After(retryInterval)
				continue
			}
			log.Info("no reboot within the grace period: PXE-booted it through its BMC", "grace", grace)
			w.done()
		}
	}
}

// What an event means for a machine the driver watches.
const (
	watchNothing  = iota
	watchStarted  // a reboot was asked for: start the grace period
	watchRebooted // the machine rebooted by itself: nothing to do
)

// rebootWatch tracks whether a machine owes a reboot: a free or reinstall
// asks for one; the machine's own Planned Reboot or a PXE boot settles it.
type rebootWatch struct {
	pending bool
	last    time.Time // when the pending reboot was asked for
}

func (w *rebootWatch) observe(event string, at time.Time) int {
	switch event {
	case evReclaim, evReinstall:
		if w.pending {
			return watchNothing // one reboot settles both
		}
		w.pending, w.last = true, at
		return watchStarted
	case evPlanned, evPXEBooting:
		if !w.pending {
			return watchNothing
		}
		w.pending = false
		return watchRebooted
	}
	return watchNothing
}

// done settles the pending reboot after the driver made it happen.
func (w *rebootWatch) done() { w.pending = false }

// pxeBoot sets a one-time PXE boot override and powers the machine on, or
// restarts it when it is on.
func (l *Lab) pxeBoot(ctx context.Context, machine string) error {
	c, sys, err := l.bmc(ctx, machine)
	if err != nil {
		return err
	}
	defer c.Logout()
	if err := sys.SetBoot(redfish.Boot{BootSourceOverrideEnabled: redfish.OnceBootSourceOverrideEnabled,
		BootSourceOverrideTarget: redfish.PxeBootSourceOverrideTarget}); err != nil {
		return fmt.Errorf("boot override: %w", err)
	}
	action := redfish.ForceRestartResetType
	if sys.PowerState == redfish.OffPowerState {
		action = redfish.OnResetType
	}
	if err := sys.Reset(action); err != nil {
		return fmt.Errorf("%s: %w", action, err)
	}
	return nil
}
