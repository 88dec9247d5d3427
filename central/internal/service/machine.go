package service

import (
	"context"
	"net"
	"regexp"
	"strings"
	"time"

	"github.com/metalfleet/metalfleet/central/internal/fleet"
	"github.com/metalfleet/metalfleet/central/internal/machine"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type machineService struct {
	*API
	apiv1.UnimplementedMachineServiceServer
}

func (a *API) readMachine(ctx context.Context, db store.Querier, id string) (*apiv1.Machine, error) {
	m, err := a.machines.Get(ctx, db, id)
	if err != nil {
		return nil, toStatus(err, "machine "+quote(id))
	}
	return m, nil
}

func (a *API) listMachines(ctx context.Context, partition, project, size string) ([]*apiv1.Machine, error) {
	out, err := a.machines.List(ctx, partition, project, size)
	if err != nil {
		return nil, toStatus(err, "machines")
	}
	return out, nil
}

func (s *machineService) Get(ctx context.Context, req *apiv1.MachineServiceGetRequest) (*apiv1.MachineServiceGetResponse, error) {
	m, err := s.readMachine(ctx, s.store.Pool(), req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.MachineServiceGetResponse{Machine: m}, nil
}

// List shows admins every machine and others their projects' allocated ones.
func (s *machineService) List(ctx context.Context, req *apiv1.MachineServiceListRequest) (*apiv1.MachineServiceListResponse, error) {
	all, err := s.listMachines(ctx, req.GetPartitionId(), req.GetProjectId(), req.GetSizeId())
	if err != nil {
		return nil, err
	}
	out, err := visible(ctx, s.API, all, func(m *apiv1.Machine) string { return m.GetAllocation().GetProjectId() }, false)
	if err != nil {
		return nil, err
	}
	return &apiv1.MachineServiceListResponse{Machines: out}, nil
}

// Issues lists the issues of every machine (of a partition).
func (s *machineService) Issues(ctx context.Context, req *apiv1.MachineServiceIssuesRequest) (*apiv1.MachineServiceIssuesResponse, error) {
	all, err := s.listMachines(ctx, req.GetPartitionId(), "", "")
	if err != nil {
		return nil, err
	}
	out := &apiv1.MachineServiceIssuesResponse{}
	for _, m := range all {
		out.Issues = append(out.Issues, m.GetIssues()...)
	}
	return out, nil
}

// eventPoll is how often a followed event log is read again. A follower
// costs one indexed read per interval; the log is written by other
// replicas too, so there is nothing local to wait on.
const eventPoll = 300 * time.Millisecond

// Events sends the machine's event log and, with follow, new events as
// they are committed.
func (s *machineService) Events(req *apiv1.MachineServiceEventsRequest, stream apiv1.MachineService_EventsServer) error {
	ctx := stream.Context()
	if _, err := s.readMachine(ctx, s.store.Pool(), req.GetId()); err != nil {
		return err
	}
	var after int64
	if l := req.GetLimit(); l > 0 {
		var err error
		if after, err = s.machines.LastSeq(ctx, req.GetId(), int64(l)); err != nil {
			return toStatus(err, "machine "+quote(req.GetId()))
		}
	}
	t := time.NewTicker(eventPoll)
	defer t.Stop()
	for {
		events, err := s.machines.EventsAfter(ctx, req.GetId(), after)
		if err != nil {
			return toStatus(err, "events of machine "+quote(req.GetId()))
		}
		if len(events) > 0 {
			m, err := s.readMachine(ctx, s.store.Pool(), req.GetId())
			if err != nil {
				return err
			}
			for _, e := range events {
				if err := stream.Send(&apiv1.MachineServiceEventsResponse{Event: e.Event, Machine: m}); err != nil {
					return err
				}
				after = e.Seq
			}
		}
		if !req.GetFollow() {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// ResolveMac gives a MAC that two machines reported to the machine the
// admin names and clears its conflicts. The owner must be the MAC's
// current owner or a machine that reported it.
func (s *machineService) ResolveMac(ctx context.Context, req *apiv1.MachineServiceResolveMacRequest) (*apiv1.MachineServiceResolveMacResponse, error) {
	var v violations
	hw, err := net.ParseMAC(req.GetMac())
	if err != nil || len(hw) != 6 {
		v.add("mac", "not a 48-bit MAC address")
	}
	v.uuid("owner_id", req.GetOwnerId())
	if err := v.err(); err != nil {
		return nil, err
	}
	mac, owner := hw.String(), strings.ToLower(req.GetOwnerId())
	err = s.machines.ResolveMAC(ctx, mac, owner)
	if err != nil {
		return nil, toStatus(err, "machine "+quote(req.GetOwnerId()))
	}
	m, err := s.readMachine(ctx, s.store.Pool(), owner)
	if err != nil {
		return nil, err
	}
	return &apiv1.MachineServiceResolveMacResponse{Machine: m}, nil
}

// hostnameRE is an RFC 1123 host label.
var hostnameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func validateCreate(req *apiv1.MachineServiceCreateRequest) error {
	var v violations
	v.uuid("project_id", req.GetProjectId())
	if req.GetId() == "" {
		v.id("partition_id", req.GetPartitionId())
		v.id("size_id", req.GetSizeId())
	} else {
		v.uuid("id", req.GetId())
		v.optionalID("partition_id", req.GetPartitionId())
		v.optionalID("size_id", req.GetSizeId())
	}
	v.id("image_id", req.GetImageId())
	v.optionalID("filesystem_layout_id", req.GetFilesystemLayoutId())
	if h := req.GetHostname(); h != "" && !hostnameRE.MatchString(h) {
		v.add("hostname", "must be a host name label: lower-case letters, digits and '-', at most 63")
	}
	if len(req.GetNetworks()) > 16 {
		v.add("networks", "at most 16")
	}
	seen := map[string]bool{}
	for i, n := range req.GetNetworks() {
		v.id(fieldIndex("networks", i), n)
		if seen[n] {
			v.add(fieldIndex("networks", i), "listed twice")
		}
		seen[n] = true
	}
	if len(req.GetSshPublicKeys()) > 32 {
		v.add("ssh_public_keys", "at most 32")
	}
	for i, k := range req.GetSshPublicKeys() {
		if !sshKeyLooksValid(k) {
			v.add(fieldIndex("ssh_public_keys", i), "not an OpenSSH public key (type base64 [comment])")
		}
	}
	v.text("user_data", req.GetUserData(), 64<<10)
	v.labels("labels", req.GetLabels())
	return v.err()
}

// sshKeyLooksValid checks the authorized_keys shape; the installed
// system's sshd is the judge of the key itself.
func sshKeyLooksValid(k string) bool {
	f := strings.Fields(k)
	if len(f) < 2 || len(k) > 16<<10 || strings.ContainsAny(k, "\n\r") {
		return false
	}
	switch {
	case strings.HasPrefix(f[0], "ssh-"), strings.HasPrefix(f[0], "ecdsa-sha2-"), strings.HasPrefix(f[0], "sk-"):
	default:
		return false
	}
	for _, c := range f[1] {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '=') {
			return false
		}
	}
	return true
}

// Create allocates a machine: in one transaction it picks a waiting,
// alive machine of the size in the partition (or the given one), honours
// size reservations, spreads the project across racks, takes the
// machine's IPs, and hands the installer its allocation. Concurrent
// calls skip machines another call has locked, so they never wait on or
// take the same machine; a failure anywhere leaves nothing behind.
func (s *machineService) Create(ctx context.Context, req *apiv1.MachineServiceCreateRequest) (*apiv1.MachineServiceCreateResponse, error) {
	if err := validateCreate(req); err != nil {
		return nil, err
	}
	id, err := s.machines.Allocate(ctx, req)
	if err != nil {
		return nil, toStatus(err, "machine allocation")
	}
	m, err := s.readMachine(ctx, s.store.Pool(), id)
	if err != nil {
		return nil, err
	}
	return &apiv1.MachineServiceCreateResponse{Machine: m}, nil
}

// Delete frees a machine: its ephemeral IPs go back to their pools, static
// ones stay with the project, the installed system is rebooted into PXE
// (reboot intent) where the installer wipes the disks and waits again.
func (s *machineService) Delete(ctx context.Context, req *apiv1.MachineServiceDeleteRequest) (*apiv1.MachineServiceDeleteResponse, error) {
	err := s.machines.Free(ctx, req.GetId())
	if err != nil {
		return nil, toStatus(err, "machine "+quote(req.GetId()))
	}
	m, err := s.readMachine(ctx, s.store.Pool(), req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.MachineServiceDeleteResponse{Machine: m}, nil
}

// Reinstall installs an image again under a new allocation id, keeping
// hostname, networks and IPs; only disks marked wipe_on_reinstall (the
// primary one) are wiped.
func (s *machineService) Reinstall(ctx context.Context, req *apiv1.MachineServiceReinstallRequest) (*apiv1.MachineServiceReinstallResponse, error) {
	var v violations
	v.optionalID("image_id", req.GetImageId())
	if err := v.err(); err != nil {
		return nil, err
	}
	err := s.machines.Reinstall(ctx, req.GetId(), req.GetImageId())
	if err != nil {
		return nil, toStatus(err, "machine "+quote(req.GetId()))
	}
	m, err := s.readMachine(ctx, s.store.Pool(), req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.MachineServiceReinstallResponse{Machine: m}, nil
}

// SetState locks, reserves or releases a machine. A locked machine cannot
// be allocated, freed or reinstalled; a reserved one is allocated only by
// id.
func (s *machineService) SetState(ctx context.Context, req *apiv1.MachineServiceSetStateRequest) (*apiv1.MachineServiceSetStateResponse, error) {
	var v violations
	name := machine.StateName(req.GetState())
	if name == "" {
		v.add("state", "must be available, reserved or locked")
	}
	if name != "available" && name != "" && strings.TrimSpace(req.GetReason()) == "" {
		v.add("reason", "required to lock or reserve a machine")
	}
	v.text("reason", req.GetReason(), 1024)
	if err := v.err(); err != nil {
		return nil, err
	}
	err := s.machines.SetState(ctx, req.GetId(), req.GetState(), req.GetReason())
	if err != nil {
		return nil, toStatus(err, "machine "+quote(req.GetId()))
	}
	m, err := s.readMachine(ctx, s.store.Pool(), req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.MachineServiceSetStateResponse{Machine: m}, nil
}

// issueDuplicateMAC: a NIC is reported by two machines.
const issueDuplicateMAC = machine.IssueDuplicateMAC

// Provisioning is the fleet's domain: the machine aggregate turns what
// installers, installed systems and PXE services report into machines
// and their lifecycle, decides which boot token may claim which machine
// and answers PXE services (docs/machine-lifecycle.md). Attach it to the
// hub with Hub.Attach.
func (a *API) Provisioning() fleet.Domain { return provisioning{a.machines} }

// provisioning is the machine aggregate as the fleet's Domain and
// Claimer, with Boot's errors mapped as the API maps its own: a PXE
// service hears a store failure as an internal error, not in the
// database's words.
type provisioning struct{ *machine.Machines }

func (p provisioning) Boot(ctx context.Context, a fleet.Agent, req *agentv1.BootRequest) (*agentv1.BootResponse, error) {
	resp, err := p.Machines.Boot(ctx, a, req)
	if err != nil {
		return nil, toStatus(err, "boot of "+req.GetMac())
	}
	return resp, nil
}
