package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// rpc is one method of the people API with its declared access rule.
type rpc struct {
	name string // full method, "/pkg.Service/Method"
	desc protoreflect.MethodDescriptor
	rule *apiv1.Access
}

// apiRPCs enumerates every registered method of metalfleet.api.v1.
func apiRPCs() []rpc {
	var out []rpc
	protoregistry.GlobalFiles.RangeFilesByPackage("metalfleet.api.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := 0; i < fd.Services().Len(); i++ {
			sd := fd.Services().Get(i)
			for j := 0; j < sd.Methods().Len(); j++ {
				md := sd.Methods().Get(j)
				acc, _ := proto.GetExtension(md.Options(), apiv1.E_Access).(*apiv1.Access)
				out = append(out, rpc{name: fmt.Sprintf("/%s/%s", sd.FullName(), md.Name()), desc: md, rule: acc})
			}
		}
		return true
	})
	slices.SortFunc(out, func(a, b rpc) int { return strings.Compare(a.name, b.name) })
	return out
}

// want is the expected code for admin, p1 owner, p1 viewer, p2 editor and
// t1 viewer (in that order); callers without a valid token always get
// Unauthenticated.
type want [5]codes.Code

const (
	OK = codes.OK
	PD = codes.PermissionDenied
	NF = codes.NotFound
)

var (
	anyone = want{OK, OK, OK, OK, OK}
	// admin-scoped: decided without looking at any object, so PD carries no information.
	adminOnly = want{OK, PD, PD, PD, PD}
	// on p1's objects: the other project's editor must not learn they exist.
	projectRead  = want{OK, OK, OK, NF, OK}
	projectWrite = want{OK, OK, PD, NF, PD}
	// deleting a project needs its tenant's editor role; its members see it but may not.
	projectTenantWrite = want{OK, PD, PD, NF, PD}
	// on tenant t1: project members have no tenant role.
	tenantRead  = want{OK, NF, NF, NF, OK}
	tenantWrite = want{OK, NF, NF, NF, PD}
)

// matrixEnv is env plus objects of both projects.
type matrixEnv struct {
	*env
	netP1, netP2, ipP1, ipP2 string
	srP1, srP2               string
}

func newMatrixEnv(t *testing.T) *matrixEnv { return newMatrixEnvOn(t, newEnv(t)) }

// newMatrixEnvOn adds the matrix's objects to base.
func newMatrixEnvOn(t *testing.T, base *env) *matrixEnv {
	e := &matrixEnv{env: base}
	ctx := e.as(t, e.admin)
	ok(e.api.Partition.Create(ctx, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "fra1", AllowSingleAttach: true}}))(t)
	ok(e.api.Network.Create(ctx, &apiv1.NetworkServiceCreateRequest{Network: dualStackSuper("super-fra1", "fra1")}))(t)
	ok(e.api.Network.Create(ctx, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{Id: "internet", Type: typeExternal, Prefixes: []string{"203.0.113.0/24"}}}))(t)
	ok(e.api.Size.Create(ctx, &apiv1.SizeServiceCreateRequest{Size: &apiv1.Size{Id: "fix", Constraints: []*apiv1.SizeConstraint{cores(4, 16)}}}))(t)
	ok(e.api.Size.Create(ctx, &apiv1.SizeServiceCreateRequest{Size: &apiv1.Size{Id: "upd", Constraints: []*apiv1.SizeConstraint{cores(500, 500)}}}))(t)
	ok(e.api.Image.Create(ctx, &apiv1.ImageServiceCreateRequest{Image: image("fix", "debian", "12.0.0")}))(t)
	ok(e.api.FilesystemLayout.Create(ctx, &apiv1.FilesystemLayoutServiceCreateRequest{FilesystemLayout: raidLVM("fix")}))(t)
	for _, p := range []struct {
		project  string
		net, ip  *string
		sr       *string
		machine  string
		nameSufx string
	}{{e.p1, &e.netP1, &e.ipP1, &e.srP1, "m-p1", "p1"}, {e.p2, &e.netP2, &e.ipP2, &e.srP2, "m-p2", "p2"}} {
		*p.net = ok(e.api.Network.Allocate(ctx, &apiv1.NetworkServiceAllocateRequest{ProjectId: p.project, PartitionId: "fra1", Name: "net-" + p.nameSufx}))(t).GetNetwork().GetId()
		*p.ip = ok(e.api.IP.Allocate(ctx, &apiv1.IPServiceAllocateRequest{ProjectId: p.project, NetworkId: *p.net}))(t).GetIp().GetIp()
		*p.sr = ok(e.api.SizeReservation.Create(ctx, &apiv1.SizeReservationServiceCreateRequest{SizeReservation: &apiv1.SizeReservation{
			Id: "sr-" + p.nameSufx, SizeId: "fix", PartitionId: "fra1", ProjectId: p.project, Amount: 1,
		}}))(t).GetSizeReservation().GetId()
		e.insertMachine(t, p.machine, p.project)
	}
	e.insertSwitch(t, "leaf1", "fra1")
	ok(e.api.Agent.Enroll(ctx, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_SWITCH, Identity: "leaf1", PartitionId: "fra1"}))(t)
	return e
}

// cell runs one RPC as c with a valid request; objects it changes or
// deletes are made fresh for it, so cells do not depend on each other.
type cell func(t *testing.T, c *caller) error

func (e *matrixEnv) rows() map[string]struct {
	want want
	run  cell
} {
	type row = struct {
		want want
		run  cell
	}
	ctx := func(t *testing.T, c *caller) context.Context { return e.as(t, c) }
	admin := func(t *testing.T) context.Context { return e.as(t, e.admin) }
	n := func() int64 { return e.next() }
	discard := func(_ any, err error) error { return err }
	return map[string]row{
		"/metalfleet.api.v1.PartitionService/Create": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.Partition.Create(ctx(t, c), &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: fresh("part", n())}}))
		}},
		"/metalfleet.api.v1.PartitionService/Get": {anyone, func(t *testing.T, c *caller) error {
			return discard(e.api.Partition.Get(ctx(t, c), &apiv1.PartitionServiceGetRequest{Id: "fra1"}))
		}},
		"/metalfleet.api.v1.PartitionService/List": {anyone, func(t *testing.T, c *caller) error {
			return discard(e.api.Partition.List(ctx(t, c), &apiv1.PartitionServiceListRequest{}))
		}},
		"/metalfleet.api.v1.PartitionService/Update": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.Partition.Update(ctx(t, c), &apiv1.PartitionServiceUpdateRequest{Partition: &apiv1.Partition{Id: "fra1", Region: "eu"}}))
		}},
		"/metalfleet.api.v1.PartitionService/Delete": {adminOnly, func(t *testing.T, c *caller) error {
			id := fresh("part", n())
			ok(e.api.Partition.Create(admin(t), &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: id}}))(t)
			return discard(e.api.Partition.Delete(ctx(t, c), &apiv1.PartitionServiceDeleteRequest{Id: id}))
		}},

		"/metalfleet.api.v1.SizeService/Create": {adminOnly, func(t *testing.T, c *caller) error {
			i := n()
			return discard(e.api.Size.Create(ctx(t, c), &apiv1.SizeServiceCreateRequest{Size: &apiv1.Size{Id: fresh("size", i), Constraints: []*apiv1.SizeConstraint{cores(uint64(1000+i), uint64(1000+i))}}}))
		}},
		"/metalfleet.api.v1.SizeService/Get": {anyone, func(t *testing.T, c *caller) error {
			return discard(e.api.Size.Get(ctx(t, c), &apiv1.SizeServiceGetRequest{Id: "fix"}))
		}},
		"/metalfleet.api.v1.SizeService/List": {anyone, func(t *testing.T, c *caller) error {
			return discard(e.api.Size.List(ctx(t, c), &apiv1.SizeServiceListRequest{}))
		}},
		"/metalfleet.api.v1.SizeService/Update": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.Size.Update(ctx(t, c), &apiv1.SizeServiceUpdateRequest{Size: &apiv1.Size{Id: "upd", Constraints: []*apiv1.SizeConstraint{cores(500, 500)}}}))
		}},
		"/metalfleet.api.v1.SizeService/Delete": {adminOnly, func(t *testing.T, c *caller) error {
			i := n()
			ok(e.api.Size.Create(admin(t), &apiv1.SizeServiceCreateRequest{Size: &apiv1.Size{Id: fresh("size", i), Constraints: []*apiv1.SizeConstraint{cores(uint64(1000+i), uint64(1000+i))}}}))(t)
			return discard(e.api.Size.Delete(ctx(t, c), &apiv1.SizeServiceDeleteRequest{Id: fresh("size", i)}))
		}},
		"/metalfleet.api.v1.SizeService/Match": {anyone, func(t *testing.T, c *caller) error {
			return discard(e.api.Size.Match(ctx(t, c), &apiv1.SizeServiceMatchRequest{Facts: &agentv1.MachineFacts{Cores: 8}}))
		}},

		"/metalfleet.api.v1.SizeReservationService/Create": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.SizeReservation.Create(ctx(t, c), &apiv1.SizeReservationServiceCreateRequest{SizeReservation: &apiv1.SizeReservation{SizeId: "fix", PartitionId: "fra1", ProjectId: e.p1, Amount: 1}}))
		}},
		"/metalfleet.api.v1.SizeReservationService/Get": {projectRead, func(t *testing.T, c *caller) error {
			return discard(e.api.SizeReservation.Get(ctx(t, c), &apiv1.SizeReservationServiceGetRequest{Id: e.srP1}))
		}},
		"/metalfleet.api.v1.SizeReservationService/List": {anyone, func(t *testing.T, c *caller) error {
			return discard(e.api.SizeReservation.List(ctx(t, c), &apiv1.SizeReservationServiceListRequest{}))
		}},
		"/metalfleet.api.v1.SizeReservationService/Update": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.SizeReservation.Update(ctx(t, c), &apiv1.SizeReservationServiceUpdateRequest{SizeReservation: &apiv1.SizeReservation{Id: e.srP1, SizeId: "fix", PartitionId: "fra1", ProjectId: e.p1, Amount: 1}}))
		}},
		"/metalfleet.api.v1.SizeReservationService/Delete": {adminOnly, func(t *testing.T, c *caller) error {
			id := ok(e.api.SizeReservation.Create(admin(t), &apiv1.SizeReservationServiceCreateRequest{SizeReservation: &apiv1.SizeReservation{SizeId: "fix", PartitionId: "fra1", ProjectId: e.p1, Amount: 1}}))(t).GetSizeReservation().GetId()
			return discard(e.api.SizeReservation.Delete(ctx(t, c), &apiv1.SizeReservationServiceDeleteRequest{Id: id}))
		}},

		"/metalfleet.api.v1.ImageService/Create": {adminOnly, func(t *testing.T, c *caller) error {
			i := n()
			return discard(e.api.Image.Create(ctx(t, c), &apiv1.ImageServiceCreateRequest{Image: image(fresh("img", i), "matrix", fmt.Sprintf("1.0.%d", i))}))
		}},
		"/metalfleet.api.v1.ImageService/Get": {anyone, func(t *testing.T, c *caller) error {
			return discard(e.api.Image.Get(ctx(t, c), &apiv1.ImageServiceGetRequest{Id: "fix"}))
		}},
		"/metalfleet.api.v1.ImageService/List": {anyone, func(t *testing.T, c *caller) error {
			return discard(e.api.Image.List(ctx(t, c), &apiv1.ImageServiceListRequest{}))
		}},
		"/metalfleet.api.v1.ImageService/Update": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.Image.Update(ctx(t, c), &apiv1.ImageServiceUpdateRequest{Image: image("fix", "debian", "12.0.0")}))
		}},
		"/metalfleet.api.v1.ImageService/Delete": {adminOnly, func(t *testing.T, c *caller) error {
			i := n()
			ok(e.api.Image.Create(admin(t), &apiv1.ImageServiceCreateRequest{Image: image(fresh("img", i), "matrix", fmt.Sprintf("1.0.%d", i))}))(t)
			return discard(e.api.Image.Delete(ctx(t, c), &apiv1.ImageServiceDeleteRequest{Id: fresh("img", i)}))
		}},
		"/metalfleet.api.v1.ImageService/Latest": {anyone, func(t *testing.T, c *caller) error {
			return discard(e.api.Image.Latest(ctx(t, c), &apiv1.ImageServiceLatestRequest{Os: "debian"}))
		}},

		"/metalfleet.api.v1.FilesystemLayoutService/Create": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.FilesystemLayout.Create(ctx(t, c), &apiv1.FilesystemLayoutServiceCreateRequest{FilesystemLayout: raidLVM(fresh("fsl", n()))}))
		}},
		"/metalfleet.api.v1.FilesystemLayoutService/Get": {anyone, func(t *testing.T, c *caller) error {
			return discard(e.api.FilesystemLayout.Get(ctx(t, c), &apiv1.FilesystemLayoutServiceGetRequest{Id: "fix"}))
		}},
		"/metalfleet.api.v1.FilesystemLayoutService/List": {anyone, func(t *testing.T, c *caller) error {
			return discard(e.api.FilesystemLayout.List(ctx(t, c), &apiv1.FilesystemLayoutServiceListRequest{}))
		}},
		"/metalfleet.api.v1.FilesystemLayoutService/Update": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.FilesystemLayout.Update(ctx(t, c), &apiv1.FilesystemLayoutServiceUpdateRequest{FilesystemLayout: raidLVM("fix")}))
		}},
		"/metalfleet.api.v1.FilesystemLayoutService/Delete": {adminOnly, func(t *testing.T, c *caller) error {
			id := fresh("fsl", n())
			ok(e.api.FilesystemLayout.Create(admin(t), &apiv1.FilesystemLayoutServiceCreateRequest{FilesystemLayout: raidLVM(id)}))(t)
			return discard(e.api.FilesystemLayout.Delete(ctx(t, c), &apiv1.FilesystemLayoutServiceDeleteRequest{Id: id}))
		}},

		"/metalfleet.api.v1.TenantService/Create": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.Tenant.Create(ctx(t, c), &apiv1.TenantServiceCreateRequest{Tenant: &apiv1.Tenant{Id: fresh("tn", n())}}))
		}},
		"/metalfleet.api.v1.TenantService/Get": {tenantRead, func(t *testing.T, c *caller) error {
			return discard(e.api.Tenant.Get(ctx(t, c), &apiv1.TenantServiceGetRequest{Id: e.t1}))
		}},
		"/metalfleet.api.v1.TenantService/List": {anyone, func(t *testing.T, c *caller) error {
			return discard(e.api.Tenant.List(ctx(t, c), &apiv1.TenantServiceListRequest{}))
		}},
		"/metalfleet.api.v1.TenantService/Update": {tenantWrite, func(t *testing.T, c *caller) error {
			return discard(e.api.Tenant.Update(ctx(t, c), &apiv1.TenantServiceUpdateRequest{Tenant: &apiv1.Tenant{Id: e.t1, Name: "T1"}}))
		}},
		"/metalfleet.api.v1.TenantService/Delete": {adminOnly, func(t *testing.T, c *caller) error {
			id := fresh("tn", n())
			e.createTenant(t, id)
			return discard(e.api.Tenant.Delete(ctx(t, c), &apiv1.TenantServiceDeleteRequest{Id: id}))
		}},

		"/metalfleet.api.v1.ProjectService/Create": {tenantWrite, func(t *testing.T, c *caller) error {
			return discard(e.api.Project.Create(ctx(t, c), &apiv1.ProjectServiceCreateRequest{Project: &apiv1.Project{TenantId: e.t1, Name: fresh("pr", n())}}))
		}},
		"/metalfleet.api.v1.ProjectService/Get": {projectRead, func(t *testing.T, c *caller) error {
			return discard(e.api.Project.Get(ctx(t, c), &apiv1.ProjectServiceGetRequest{Id: e.p1}))
		}},
		"/metalfleet.api.v1.ProjectService/List": {anyone, func(t *testing.T, c *caller) error {
			return discard(e.api.Project.List(ctx(t, c), &apiv1.ProjectServiceListRequest{}))
		}},
		"/metalfleet.api.v1.ProjectService/Update": {projectWrite, func(t *testing.T, c *caller) error {
			return discard(e.api.Project.Update(ctx(t, c), &apiv1.ProjectServiceUpdateRequest{Project: &apiv1.Project{Id: e.p1, TenantId: e.t1, Name: "p1"}}))
		}},
		"/metalfleet.api.v1.ProjectService/Delete": {projectTenantWrite, func(t *testing.T, c *caller) error {
			// A fresh project of t1, and the caller's p1 role moved onto it.
			id := e.createProject(t, e.t1, fresh("del", n()))
			switch c {
			case e.p1Owner:
				c = e.mint(t, "owner-of-fresh", e.admin, &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{id: owner}})
			case e.p1Viewer:
				c = e.mint(t, "viewer-of-fresh", e.admin, &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{id: viewer}})
			}
			return discard(e.api.Project.Delete(ctx(t, c), &apiv1.ProjectServiceDeleteRequest{Id: id}))
		}},

		"/metalfleet.api.v1.NetworkService/Create": {adminOnly, func(t *testing.T, c *caller) error {
			i := n()
			return discard(e.api.Network.Create(ctx(t, c), &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
				Id: fresh("ext", i), Type: typeExternal, Prefixes: []string{fmt.Sprintf("198.18.%d.0/24", i%256)},
			}}))
		}},
		"/metalfleet.api.v1.NetworkService/Allocate": {projectWrite, func(t *testing.T, c *caller) error {
			return discard(e.api.Network.Allocate(ctx(t, c), &apiv1.NetworkServiceAllocateRequest{ProjectId: e.p1, PartitionId: "fra1"}))
		}},
		"/metalfleet.api.v1.NetworkService/Get": {projectRead, func(t *testing.T, c *caller) error {
			return discard(e.api.Network.Get(ctx(t, c), &apiv1.NetworkServiceGetRequest{Id: e.netP1}))
		}},
		"/metalfleet.api.v1.NetworkService/List": {anyone, func(t *testing.T, c *caller) error {
			return discard(e.api.Network.List(ctx(t, c), &apiv1.NetworkServiceListRequest{}))
		}},
		"/metalfleet.api.v1.NetworkService/Update": {projectWrite, func(t *testing.T, c *caller) error {
			return discard(e.api.Network.Update(ctx(t, c), &apiv1.NetworkServiceUpdateRequest{Id: e.netP1, Name: "net-p1"}))
		}},
		"/metalfleet.api.v1.NetworkService/Delete": {projectWrite, func(t *testing.T, c *caller) error {
			id := ok(e.api.Network.Allocate(admin(t), &apiv1.NetworkServiceAllocateRequest{ProjectId: e.p1, PartitionId: "fra1"}))(t).GetNetwork().GetId()
			return discard(e.api.Network.Delete(ctx(t, c), &apiv1.NetworkServiceDeleteRequest{Id: id}))
		}},

		"/metalfleet.api.v1.IPService/Allocate": {projectWrite, func(t *testing.T, c *caller) error {
			return discard(e.api.IP.Allocate(ctx(t, c), &apiv1.IPServiceAllocateRequest{ProjectId: e.p1, NetworkId: e.netP1}))
		}},
		"/metalfleet.api.v1.IPService/Get": {projectRead, func(t *testing.T, c *caller) error {
			return discard(e.api.IP.Get(ctx(t, c), &apiv1.IPServiceGetRequest{Ip: e.ipP1}))
		}},
		"/metalfleet.api.v1.IPService/List": {anyone, func(t *testing.T, c *caller) error {
			return discard(e.api.IP.List(ctx(t, c), &apiv1.IPServiceListRequest{}))
		}},
		"/metalfleet.api.v1.IPService/Update": {projectWrite, func(t *testing.T, c *caller) error {
			return discard(e.api.IP.Update(ctx(t, c), &apiv1.IPServiceUpdateRequest{Ip: e.ipP1, Name: "ip-p1"}))
		}},
		"/metalfleet.api.v1.IPService/Release": {projectWrite, func(t *testing.T, c *caller) error {
			ip := ok(e.api.IP.Allocate(admin(t), &apiv1.IPServiceAllocateRequest{ProjectId: e.p1, NetworkId: "internet"}))(t).GetIp().GetIp()
			return discard(e.api.IP.Release(ctx(t, c), &apiv1.IPServiceReleaseRequest{Ip: ip}))
		}},

		// Token calls act on the caller's own tokens, which everyone has.
		"/metalfleet.api.v1.TokenService/Create": {anyone, func(t *testing.T, c *caller) error {
			return discard(e.api.Token.Create(ctx(t, c), e.subset(t, c)))
		}},
		"/metalfleet.api.v1.TokenService/List": {anyone, func(t *testing.T, c *caller) error {
			return discard(e.api.Token.List(ctx(t, c), &apiv1.TokenServiceListRequest{}))
		}},
		"/metalfleet.api.v1.TokenService/Revoke": {anyone, func(t *testing.T, c *caller) error {
			id := "00000000-0000-0000-0000-000000000000"
			if c.tokenID != "" {
				id = e.mint(t, "to-revoke", c, e.subset(t, c)).tokenID
			}
			return discard(e.api.Token.Revoke(ctx(t, c), &apiv1.TokenServiceRevokeRequest{Id: id}))
		}},
		"/metalfleet.api.v1.TokenService/Whoami": {anyone, func(t *testing.T, c *caller) error {
			return discard(e.api.Token.Whoami(ctx(t, c), &apiv1.TokenServiceWhoamiRequest{}))
		}},

		"/metalfleet.api.v1.MachineService/Get": {projectRead, func(t *testing.T, c *caller) error {
			return discard(e.api.Machine.Get(ctx(t, c), &apiv1.MachineServiceGetRequest{Id: "m-p1"}))
		}},
		"/metalfleet.api.v1.MachineService/List": {anyone, func(t *testing.T, c *caller) error {
			return discard(e.api.Machine.List(ctx(t, c), &apiv1.MachineServiceListRequest{}))
		}},
		"/metalfleet.api.v1.MachineService/Create": {projectWrite, func(t *testing.T, c *caller) error {
			id := e.waitingMachine(t)
			return discard(e.api.Machine.Create(ctx(t, c), &apiv1.MachineServiceCreateRequest{ProjectId: e.p1, Id: id, ImageId: "fix"}))
		}},
		"/metalfleet.api.v1.MachineService/Delete": {projectWrite, func(t *testing.T, c *caller) error {
			id := e.allocatedMachine(t, e.p1)
			return discard(e.api.Machine.Delete(ctx(t, c), &apiv1.MachineServiceDeleteRequest{Id: id}))
		}},
		"/metalfleet.api.v1.MachineService/Reinstall": {projectWrite, func(t *testing.T, c *caller) error {
			id := e.allocatedMachine(t, e.p1)
			return discard(e.api.Machine.Reinstall(ctx(t, c), &apiv1.MachineServiceReinstallRequest{Id: id}))
		}},
		"/metalfleet.api.v1.MachineService/Power": {projectWrite, func(t *testing.T, c *caller) error {
			return discard(e.api.Machine.Power(ctx(t, c), &apiv1.MachineServicePowerRequest{Id: e.allocatedMachine(t, e.p1), Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE}))
		}},
		"/metalfleet.api.v1.MachineService/Boot": {projectWrite, func(t *testing.T, c *caller) error {
			return discard(e.api.Machine.Boot(ctx(t, c), &apiv1.MachineServiceBootRequest{Id: e.allocatedMachine(t, e.p1), Device: agentv1.BmcBootDevice_BMC_BOOT_DEVICE_PXE}))
		}},
		"/metalfleet.api.v1.MachineService/Identify": {projectWrite, func(t *testing.T, c *caller) error {
			return discard(e.api.Machine.Identify(ctx(t, c), &apiv1.MachineServiceIdentifyRequest{Id: e.allocatedMachine(t, e.p1), On: true}))
		}},
		"/metalfleet.api.v1.MachineService/UpdateFirmware": {projectWrite, func(t *testing.T, c *caller) error {
			return discard(e.api.Machine.UpdateFirmware(ctx(t, c), &apiv1.MachineServiceUpdateFirmwareRequest{Id: e.allocatedMachine(t, e.p1),
				Component: agentv1.BmcFirmwareComponent_BMC_FIRMWARE_COMPONENT_BIOS, Url: "https://fw.example/bios.bin"}))
		}},
		"/metalfleet.api.v1.MachineService/SetState": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.Machine.SetState(ctx(t, c), &apiv1.MachineServiceSetStateRequest{Id: "m-p1", State: apiv1.MachineState_MACHINE_STATE_RESERVED, Reason: "matrix"}))
		}},
		"/metalfleet.api.v1.MachineService/Console": {projectWrite, func(t *testing.T, c *caller) error {
			st, err := e.api.Machine.Console(ctx(t, c))
			if err != nil {
				return err
			}
			if err := st.Send(&apiv1.MachineServiceConsoleRequest{Id: "m-p1"}); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			_, err = st.Recv()
			// Past the authorisation: m-p1 has no BMC, the console's own refusal.
			if status.Code(err) == codes.FailedPrecondition && strings.Contains(err.Error(), "no BMC") {
				return nil
			}
			return err
		}},
		"/metalfleet.api.v1.MachineService/Events": {projectRead, func(t *testing.T, c *caller) error {
			st, err := e.api.Machine.Events(ctx(t, c), &apiv1.MachineServiceEventsRequest{Id: "m-p1"})
			if err != nil {
				return err
			}
			for {
				if _, err := st.Recv(); err != nil {
					if errors.Is(err, io.EOF) {
						return nil
					}
					return err
				}
			}
		}},
		"/metalfleet.api.v1.MachineService/ResolveMac": {adminOnly, func(t *testing.T, c *caller) error {
			// The MAC's owner confirmed as its owner: a no-op resolution.
			id := e.waitingMachine(t)
			k := n()
			mac := fmt.Sprintf("52:54:00:%02x:%02x:%02x", k>>16&0xff, k>>8&0xff, k&0xff)
			e.exec(t, `INSERT INTO machine_nics (mac, machine_id, name) VALUES ($1, $2, 'eth0')`, mac, id)
			return discard(e.api.Machine.ResolveMac(ctx(t, c), &apiv1.MachineServiceResolveMacRequest{Mac: mac, OwnerId: id}))
		}},
		"/metalfleet.api.v1.MachineService/Issues": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.Machine.Issues(ctx(t, c), &apiv1.MachineServiceIssuesRequest{}))
		}},
		"/metalfleet.api.v1.SwitchService/Get": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.Switch.Get(ctx(t, c), &apiv1.SwitchServiceGetRequest{Id: "leaf1"}))
		}},
		"/metalfleet.api.v1.SwitchService/List": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.Switch.List(ctx(t, c), &apiv1.SwitchServiceListRequest{}))
		}},
		"/metalfleet.api.v1.SwitchService/SetPort": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.Switch.SetPort(ctx(t, c), &apiv1.SwitchServiceSetPortRequest{Id: "leaf1", Port: "swp1", Up: true}))
		}},
		"/metalfleet.api.v1.BMCService/GetSettings": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.BMC.GetSettings(ctx(t, c), &apiv1.BMCServiceGetSettingsRequest{PartitionId: "fra1"}))
		}},
		"/metalfleet.api.v1.BMCService/SetSettings": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.BMC.SetSettings(ctx(t, c), &apiv1.BMCServiceSetSettingsRequest{Settings: &apiv1.PartitionBMC{
				PartitionId: "fra1", User: "root", Password: "secret"}}))
		}},
		"/metalfleet.api.v1.AgentService/List": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.Agent.List(ctx(t, c), &apiv1.AgentServiceListRequest{}))
		}},
		"/metalfleet.api.v1.AgentService/Get": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.Agent.Get(ctx(t, c), &apiv1.AgentServiceGetRequest{Id: "switch/leaf1"}))
		}},
		"/metalfleet.api.v1.AgentService/Enroll": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.Agent.Enroll(ctx(t, c), &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_BMC, Identity: fresh("bmc", n()), PartitionId: "fra1"}))
		}},
		"/metalfleet.api.v1.AgentService/Configure": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.Agent.Configure(ctx(t, c), &apiv1.AgentServiceConfigureRequest{Id: "switch/leaf1", ReportFacts: true}))
		}},
		"/metalfleet.api.v1.AgentService/Delete": {adminOnly, func(t *testing.T, c *caller) error {
			id := fresh("pixie", n())
			ok(e.api.Agent.Enroll(admin(t), &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_PIXIE, Identity: id, PartitionId: "fra1"}))(t)
			return discard(e.api.Agent.Delete(ctx(t, c), &apiv1.AgentServiceDeleteRequest{Id: "pixie/" + id}))
		}},
		"/metalfleet.api.v1.BootTokenService/Create": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.BootToken.Create(ctx(t, c), &apiv1.BootTokenServiceCreateRequest{PartitionId: "fra1"}))
		}},
		"/metalfleet.api.v1.AuditService/List": {adminOnly, func(t *testing.T, c *caller) error {
			return discard(e.api.Audit.List(ctx(t, c), &apiv1.AuditServiceListRequest{}))
		}},
	}
}

// subset is a token request with (a copy of) the caller's own roles and a
// short life; callers without a valid token get a harmless request.
func (e *matrixEnv) subset(t *testing.T, c *caller) *apiv1.TokenServiceCreateRequest {
	req := &apiv1.TokenServiceCreateRequest{Description: "subset of " + c.name, ExpiresIn: durationpb.New(time.Hour)}
	if c.tokenID == "" {
		req.ProjectRoles = map[string]apiv1.Level{e.p1: viewer}
		return req
	}
	me := ok(e.api.Token.Whoami(e.as(t, c), &apiv1.TokenServiceWhoamiRequest{}))(t).GetToken()
	req.AdminRole, req.ProjectRoles, req.TenantRoles = me.GetAdminRole(), me.GetProjectRoles(), me.GetTenantRoles()
	return req
}

// TestAuthMatrix calls every RPC of the people API as every kind of caller.
func TestAuthMatrix(t *testing.T) {
	t.Parallel()
	e := newMatrixEnv(t)
	rows := e.rows()
	callers := []*caller{e.admin, e.p1Owner, e.p1Viewer, e.p2Editor, e.t1Viewer}
	all := apiRPCs()

	// The matrix and the API must list the same methods: a new RPC without
	// a row fails here, as does a row for a method that is gone.
	var names []string
	for _, r := range all {
		names = append(names, r.name)
		if _, has := rows[r.name]; !has {
			t.Errorf("%s has no auth matrix row", r.name)
		}
		if r.rule == nil || r.rule.GetScope() == apiv1.Scope_SCOPE_UNSPECIFIED {
			t.Errorf("%s declares no access rule", r.name)
		}
	}
	for name := range rows {
		if !slices.Contains(names, name) {
			t.Errorf("auth matrix row %s names no registered RPC", name)
		}
	}

	for _, r := range all {
		row, has := rows[r.name]
		if !has {
			continue
		}
		t.Run(strings.TrimPrefix(r.name, "/metalfleet.api.v1."), func(t *testing.T) {
			// The rule the proto declares must agree with the row's pattern.
			checkRuleAgrees(t, r, row.want)
			for i, c := range callers {
				t.Run(c.name, func(t *testing.T) {
					err := row.run(t, c)
					if got := status.Code(err); got != row.want[i] {
						t.Fatalf("%s as %s: %v, want %v", r.name, c.name, err, row.want[i])
					}
				})
			}
			for _, c := range []*caller{e.none, e.garbage} {
				t.Run(c.name, func(t *testing.T) {
					if got := status.Code(row.run(t, c)); got != codes.Unauthenticated {
						t.Fatalf("%s as %s: %v, want Unauthenticated", r.name, c.name, got)
					}
				})
			}
		})
	}

	// Every mutating RPC succeeded at least once above with its audit row checked.
	for _, r := range all {
		if !isMutating(r.name) {
			continue
		}
		n, _ := e.audited.Load(r.name)
		if n == nil || n.(*atomic.Int64).Load() == 0 {
			t.Errorf("%s: no successful call with a verified audit row", r.name)
		}
	}
}

// checkRuleAgrees cross-checks a matrix row against the declared rule, so
// the matrix cannot silently drift from the protos.
func checkRuleAgrees(t *testing.T, r rpc, w want) {
	t.Helper()
	switch r.rule.GetScope() {
	case apiv1.Scope_SCOPE_AUTHENTICATED:
		if w != anyone {
			t.Errorf("%s is SCOPE_AUTHENTICATED but the matrix expects %v", r.name, w)
		}
	case apiv1.Scope_SCOPE_ADMIN:
		if w != adminOnly {
			t.Errorf("%s is SCOPE_ADMIN but the matrix expects %v", r.name, w)
		}
	default:
		if w == anyone || w == adminOnly {
			t.Errorf("%s is %v but the matrix expects %v", r.name, r.rule.GetScope(), w)
		}
	}
}

// TestNoProbing: for every RPC whose rule names an object, a caller without
// a role on the object's project (or tenant) gets the same NotFound as for
// an object that does not exist; and no list ever shows another project's
// objects. Requests are built from the descriptors, so new RPCs are covered.
func TestNoProbing(t *testing.T) {
	t.Parallel()
	e := newMatrixEnv(t)
	type view struct {
		c      *caller
		others map[string]string // resource → an object the caller must not see
		hidden []string          // ids that must never appear in its lists
	}
	p1Objects := map[string]string{"project": e.p1, "tenant": e.t1, "network": e.netP1, "ip": e.ipP1, "size_reservation": e.srP1, "machine": "m-p1"}
	p2Objects := map[string]string{"project": e.p2, "tenant": e.t2, "network": e.netP2, "ip": e.ipP2, "size_reservation": e.srP2, "machine": "m-p2"}
	values := func(m map[string]string) []string {
		var out []string
		for _, v := range m {
			out = append(out, v)
		}
		return out
	}
	views := []view{
		{e.p2Editor, p1Objects, values(p1Objects)},
		{e.p1Viewer, p2Objects, values(p2Objects)},
		{e.p1Owner, p2Objects, values(p2Objects)},
		{e.t1Viewer, p2Objects, values(p2Objects)},
	}
	missing := map[string]string{"project": "00000000-0000-0000-0000-000000000000", "tenant": "no-such-tenant", "network": "no-such-network",
		"ip": "192.0.2.99", "size_reservation": "no-such-reservation", "machine": "no-such-machine"}

	for _, r := range apiRPCs() {
		field, resource := r.rule.GetField(), r.rule.GetResource()
		scope := r.rule.GetScope()
		if scope != apiv1.Scope_SCOPE_PROJECT && scope != apiv1.Scope_SCOPE_TENANT {
			continue
		}
		for _, v := range views {
			t.Run(strings.TrimPrefix(r.name, "/metalfleet.api.v1.")+"/"+v.c.name, func(t *testing.T) {
				other, known := v.others[resource]
				if !known {
					t.Fatalf("no test object for resource %q", resource)
				}
				errOther := e.invokeWith(t, v.c, r, field, other)
				errMissing := e.invokeWith(t, v.c, r, field, missing[resource])
				wantCode(t, errOther, codes.NotFound)
				wantCode(t, errMissing, codes.NotFound)
				a := strings.ReplaceAll(status.Convert(errOther).Message(), other, "X")
				b := strings.ReplaceAll(status.Convert(errMissing).Message(), missing[resource], "X")
				if a != b {
					t.Fatalf("another project's object answers %q, a missing one %q", a, b)
				}
			})
		}
	}

	for _, r := range apiRPCs() {
		if r.desc.Name() != "List" || r.rule.GetScope() != apiv1.Scope_SCOPE_AUTHENTICATED {
			continue
		}
		for _, v := range views {
			t.Run(strings.TrimPrefix(r.name, "/metalfleet.api.v1.")+"/"+v.c.name, func(t *testing.T) {
				for _, filtered := range []bool{false, true} {
					req := newMessage(t, r.desc.Input())
					if filtered {
						// Asking for the hidden project by name changes nothing.
						if fd := req.ProtoReflect().Descriptor().Fields().ByName("project_id"); fd != nil {
							req.ProtoReflect().Set(fd, protoreflect.ValueOfString(v.others["project"]))
						} else if fd := req.ProtoReflect().Descriptor().Fields().ByName("tenant_id"); fd != nil {
							req.ProtoReflect().Set(fd, protoreflect.ValueOfString(v.others["tenant"]))
						}
					}
					resp := newMessage(t, r.desc.Output())
					if err := e.conn.Invoke(e.as(t, v.c), r.name, req, resp); err != nil {
						t.Fatalf("%s: %v", r.name, err)
					}
					if leak := findStrings(resp.ProtoReflect(), v.hidden); leak != "" {
						t.Fatalf("%s as %s shows %s: %v", r.name, v.c.name, leak, resp)
					}
				}
			})
		}
	}
}

func newMessage(t *testing.T, md protoreflect.MessageDescriptor) proto.Message {
	t.Helper()
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName())
	if err != nil {
		t.Fatal(err)
	}
	return mt.New().Interface()
}

// invokeWith calls r with a request whose rule field (a dotted path) is id.
func (e *matrixEnv) invokeWith(t *testing.T, c *caller, r rpc, path, id string) error {
	t.Helper()
	req := newMessage(t, r.desc.Input())
	m := req.ProtoReflect()
	parts := strings.Split(path, ".")
	for i, name := range parts {
		fd := m.Descriptor().Fields().ByName(protoreflect.Name(name))
		if fd == nil {
			t.Fatalf("%s: rule field %q not in %s", r.name, path, m.Descriptor().FullName())
		}
		if i < len(parts)-1 {
			m = m.Mutable(fd).Message()
			continue
		}
		m.Set(fd, protoreflect.ValueOfString(id))
	}
	if r.desc.IsStreamingServer() {
		// The request goes out first; the answer (or refusal) comes with
		// the first message.
		st, err := e.conn.NewStream(e.as(t, c), &grpc.StreamDesc{ServerStreams: true}, r.name)
		if err != nil {
			return err
		}
		if err := st.SendMsg(req); err != nil {
			return err
		}
		if err := st.CloseSend(); err != nil {
			return err
		}
		for {
			if err := st.RecvMsg(newMessage(t, r.desc.Output())); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
		}
	}
	return e.conn.Invoke(e.as(t, c), r.name, req, newMessage(t, r.desc.Output()))
}

// findStrings returns the first of needles that occurs as a string value or
// map key anywhere in m.
func findStrings(m protoreflect.Message, needles []string) string {
	var found string
	check := func(s string) {
		if found == "" && slices.Contains(needles, s) {
			found = s
		}
	}
	var walk func(m protoreflect.Message)
	value := func(fd protoreflect.FieldDescriptor, v protoreflect.Value) {
		switch fd.Kind() {
		case protoreflect.StringKind:
			check(v.String())
		case protoreflect.MessageKind, protoreflect.GroupKind:
			walk(v.Message())
		}
	}
	walk = func(m protoreflect.Message) {
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList():
				for i := 0; i < v.List().Len(); i++ {
					value(fd, v.List().Get(i))
				}
			case fd.IsMap():
				v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
					check(k.String())
					value(fd.MapValue(), mv)
					return true
				})
			default:
				value(fd, v)
			}
			return found == ""
		})
	}
	walk(m)
	return found
}
