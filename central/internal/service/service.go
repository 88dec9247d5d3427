// Package service implements the people API (metalfleet.api.v1) on the store.
// One file per service; every mutating call changes its rows and writes its
// audit row in one transaction. Authorisation already happened in the auth
// interceptor; handlers only filter lists by what the caller may see.
package service

import (
	"context"
	"fmt"
	"github.com/metalfleet/metalfleet/central/internal/console"
	"github.com/metalfleet/metalfleet/central/internal/network"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/metalfleet/metalfleet/central/internal/machine"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Config holds the service settings that are not per request.
type Config struct {
	// VRFFirst and VRFLast bound the VRF ids / VNIs handed to child networks.
	VRFFirst, VRFLast uint32
	// Centrals are the agent endpoints (host:port) installers dial; they
	// go onto the installer's kernel command line.
	Centrals []string
	// CAPin is the lower-case hex sha256 of central's CA certificate (DER),
	// which installers check the CA they fetch against.
	CAPin string
	// BootTokenTTL is how long a boot token handed to a PXE boot is valid.
	BootTokenTTL time.Duration
	// AliveWithin is how recent a machine's last contact must be for it to
	// be allocated (the fleet's "alive" threshold).
	AliveWithin time.Duration
}

// DefaultConfig is used for zero fields.
func DefaultConfig() Config {
	return Config{VRFFirst: 10000, VRFLast: 16777215, BootTokenTTL: 30 * time.Minute, AliveWithin: 70 * time.Second}
}

// API implements every service of the people API.
type API struct {
	store *store.Store
	log   *slog.Logger
	cfg   Config
	fleet Fleet
	// console joins people's console streams with metal-bmc's.
	console *console.Broker
	// machines is the machine aggregate, the writer of the machine tables.
	machines *machine.Machines
	// networks is the network aggregate, the writer of the network tables.
	networks *network.Networks
}

// Option configures the API.
type Option func(*API)

// WithFleet serves the agent and boot token services on the fleet f.
func WithFleet(f Fleet) Option { return func(a *API) { a.fleet = f } }

// WithConsole serves MachineService.Console through b.
func WithConsole(b *console.Broker) Option { return func(a *API) { a.console = b } }

// New builds the API and makes the start-up pools (VRF ids) exist.
func New(ctx context.Context, st *store.Store, log *slog.Logger, cfg Config, opts ...Option) (*API, error) {
	def := DefaultConfig()
	if cfg.VRFFirst == 0 {
		cfg.VRFFirst = def.VRFFirst
	}
	if cfg.VRFLast == 0 {
		cfg.VRFLast = def.VRFLast
	}
	if cfg.BootTokenTTL <= 0 {
		cfg.BootTokenTTL = def.BootTokenTTL
	}
	if cfg.AliveWithin <= 0 {
		cfg.AliveWithin = def.AliveWithin
	}
	if cfg.VRFLast > network.MaxVNI {
		return nil, fmt.Errorf("vrf range %d-%d: a VRF id is a 24-bit VNI, at most %d", cfg.VRFFirst, cfg.VRFLast, network.MaxVNI)
	}
	if cfg.VRFFirst > cfg.VRFLast {
		return nil, fmt.Errorf("vrf range %d-%d is empty", cfg.VRFFirst, cfg.VRFLast)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &API{store: st, log: log, cfg: cfg, networks: network.New(st, log)}
	for _, o := range opts {
		o(a)
	}
	mopts := []machine.Option{machine.WithLog(log)}
	if a.fleet != nil {
		mopts = append(mopts, machine.WithDocs(a.fleet), machine.WithBoot(a.fleet, a.trust(), cfg.BootTokenTTL))
	}
	a.machines = machine.New(st, cfg.AliveWithin, mopts...)
	if err := a.networks.EnsureVRFPool(ctx, cfg.VRFFirst, cfg.VRFLast); err != nil {
		return nil, fmt.Errorf("vrf pool: %w", err)
	}
	return a, nil
}

// Register adds every service to s.
func (a *API) Register(s grpc.ServiceRegistrar) {
	apiv1.RegisterPartitionServiceServer(s, &partitionService{API: a})
	apiv1.RegisterSizeServiceServer(s, &sizeService{API: a})
	apiv1.RegisterSizeReservationServiceServer(s, &sizeReservationService{API: a})
	apiv1.RegisterImageServiceServer(s, &imageService{API: a})
	apiv1.RegisterFilesystemLayoutServiceServer(s, &filesystemLayoutService{API: a})
	apiv1.RegisterTenantServiceServer(s, &tenantService{API: a})
	apiv1.RegisterProjectServiceServer(s, &projectService{API: a})
	apiv1.RegisterNetworkServiceServer(s, &networkService{API: a})
	apiv1.RegisterIPServiceServer(s, &ipService{API: a})
	apiv1.RegisterTokenServiceServer(s, &tokenService{API: a})
	apiv1.RegisterMachineServiceServer(s, &machineService{API: a})
	apiv1.RegisterSwitchServiceServer(s, &switchService{API: a})
	apiv1.RegisterBMCServiceServer(s, &bmcService{API: a})
	apiv1.RegisterAuditServiceServer(s, &auditService{API: a})
	apiv1.RegisterAgentServiceServer(s, &agentService{API: a})
	apiv1.RegisterBootTokenServiceServer(s, &bootTokenService{API: a})
}
