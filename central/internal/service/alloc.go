package service

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/fsm"
	"github.com/metalfleet/metalfleet/central/internal/ipam"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

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
	var id string
	if req.GetId() == "" {
		// Concurrent allocations of one size, partition and project share
		// a transaction (allocBatches); what a batch cannot serve runs on
		// its own below, which also gives each call its precise error.
		res, err := s.allocBatches.Do(ctx, allocKey{partition: req.GetPartitionId(), size: req.GetSizeId(), project: req.GetProjectId()},
			allocReq{req: req, call: auth.CallFrom(ctx)})
		if err != nil {
			return nil, toStatus(err, "machine allocation")
		}
		id = res.id
	}
	if id == "" {
		var err error
		if id, err = s.createOne(ctx, req); err != nil {
			return nil, toStatus(err, "machine allocation")
		}
	}
	m, err := s.readMachine(ctx, s.store.Pool(), id)
	if err != nil {
		return nil, err
	}
	return &apiv1.MachineServiceCreateResponse{Machine: m}, nil
}

// createOne allocates one machine in a transaction of its own.
func (s *machineService) createOne(ctx context.Context, req *apiv1.MachineServiceCreateRequest) (string, error) {
	var id string
	err := s.store.Tx(ctx, func(tx pgx.Tx) error {
		img, err := usableImage(ctx, tx, req.GetImageId())
		if err != nil {
			return err
		}
		nets, err := machineNetworks(ctx, tx, req.GetProjectId(), req.GetNetworks())
		if err != nil {
			return err
		}
		var (
			agentID string
			m       *apiv1.Machine
		)
		if req.GetId() != "" {
			m, agentID, err = s.pickGiven(ctx, tx, req)
		} else {
			m, agentID, err = s.pickWaiting(ctx, tx, req)
		}
		if err != nil {
			return err
		}
		id = m.GetId()
		if req.GetPartitionId() != "" && m.GetPartitionId() != req.GetPartitionId() {
			return status.Errorf(codes.FailedPrecondition, "machine %s is in partition %s, not %s", id, quote(m.GetPartitionId()), quote(req.GetPartitionId()))
		}
		layouts, err := filesystemLayouts.List(ctx, tx, "TRUE")
		if err != nil {
			return fmt.Errorf("read filesystem layouts: %w", err)
		}
		layout, err := chooseLayout(ctx, tx, req.GetFilesystemLayoutId(), layouts, m, img)
		if err != nil {
			return err
		}
		now, err := dbNow(ctx, tx)
		if err != nil {
			return err
		}
		alloc := newAllocation(req, m, img, layout, now)
		docNets, err := s.takeMachineIPs(ctx, tx, id, req.GetProjectId(), nets, alloc)
		if err != nil {
			return err
		}
		m.Allocation = alloc
		if req.GetLabels() != nil {
			m.Labels = req.GetLabels()
		}
		spec, err := store.EncodeSpec(m)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE machines SET project_id = $2, allocation_id = $3, installed = FALSE, spec = $4,
			generation = generation + 1, updated_at = now() WHERE id = $1`, id, req.GetProjectId(), alloc.GetId(), spec); err != nil {
			return fmt.Errorf("allocate machine %s: %w", id, err)
		}
		if err := logEvent(ctx, tx, id, "Allocated", allocatedMessage(alloc)); err != nil {
			return err
		}
		part, err := partitions.Get(ctx, tx, m.GetPartitionId())
		if err != nil {
			return fmt.Errorf("read partition: %w", err)
		}
		doc := allocationDocument(alloc, img, layout, docNets, part)
		if err := s.setMachineDocument(ctx, tx, agentID, id, func(md *agentv1.MachineDocument) { md.Allocation = doc }); err != nil {
			return err
		}
		return store.Audit(ctx, tx, "machine/"+id, req.GetProjectId())
	})
	return id, err
}

// newAllocation is the allocation req makes of machine m.
// dbNow is the transaction's time on the database's clock: the time the
// machine's events are stamped with, so that "events since the allocation"
// holds whatever the clocks of central's hosts say.
func dbNow(ctx context.Context, tx pgx.Tx) (time.Time, error) {
	var now time.Time
	if err := tx.QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
		return now, fmt.Errorf("read time: %w", err)
	}
	return now, nil
}

func newAllocation(req *apiv1.MachineServiceCreateRequest, m *apiv1.Machine, img *apiv1.Image, layout *apiv1.FilesystemLayout, now time.Time) *apiv1.MachineAllocation {
	alloc := &apiv1.MachineAllocation{
		Id: uuid.NewString(), ProjectId: req.GetProjectId(), Hostname: req.GetHostname(), ImageId: img.GetId(),
		Networks: req.GetNetworks(), SshPublicKeys: req.GetSshPublicKeys(), UserData: req.GetUserData(),
		FilesystemLayoutId: layout.GetId(), CreatedAt: timestamppb.New(now),
	}
	if alloc.Hostname == "" {
		alloc.Hostname = "m-" + m.GetId()[:8]
	}
	return alloc
}

func allocatedMessage(alloc *apiv1.MachineAllocation) string {
	return fmt.Sprintf("to project %s as %s", alloc.GetProjectId(), alloc.GetHostname())
}

// allocationDocument is what the installer gets to install.
func allocationDocument(alloc *apiv1.MachineAllocation, img *apiv1.Image, layout *apiv1.FilesystemLayout, nets []*agentv1.MachineNetwork, part *apiv1.Partition) *agentv1.MachineAllocation {
	return &agentv1.MachineAllocation{
		Id: alloc.GetId(), ProjectId: alloc.GetProjectId(), Hostname: alloc.GetHostname(),
		Image:  &agentv1.ImageRef{Id: img.GetId(), Os: img.GetOs(), Version: img.GetVersion(), Url: img.GetUrl(), Sha256: img.GetSha256()},
		Layout: layoutDoc(layout), Networks: nets, SshPublicKeys: alloc.GetSshPublicKeys(), UserData: alloc.GetUserData(),
		DnsServers: part.GetDnsServers(), NtpServers: part.GetNtpServers(), CreatedAt: alloc.GetCreatedAt(),
	}
}

// usableImage reads an image new machines may get.
func usableImage(ctx context.Context, tx pgx.Tx, id string) (*apiv1.Image, error) {
	img, err := images.Get(ctx, tx, id)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, status.Errorf(codes.NotFound, "image %s not found", quote(id))
	}
	if err != nil {
		return nil, err
	}
	if e := img.GetExpiresAt(); e != nil && e.AsTime().Before(time.Now()) {
		return nil, status.Errorf(codes.FailedPrecondition, "image %q expired on %s", id, e.AsTime().Format(time.DateOnly))
	}
	if img.GetUrl() == "" || img.GetSha256() == "" {
		return nil, status.Errorf(codes.FailedPrecondition, "image %q has no url or sha256", id)
	}
	return img, nil
}

// machineNetworks reads the networks a machine joins: the project's own
// child networks and shared external ones.
func machineNetworks(ctx context.Context, tx pgx.Tx, project string, ids []string) ([]*apiv1.Network, error) {
	var out []*apiv1.Network
	for i, id := range ids {
		n, err := networks.Get(ctx, tx, id)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, status.Errorf(codes.NotFound, "networks[%d]: network %s not found", i, quote(id))
		}
		if err != nil {
			return nil, err
		}
		switch n.GetType() {
		case apiv1.NetworkType_NETWORK_TYPE_CHILD:
			if n.GetProjectId() != project {
				return nil, status.Errorf(codes.NotFound, "networks[%d]: network %s not found", i, quote(id))
			}
		case apiv1.NetworkType_NETWORK_TYPE_EXTERNAL:
		default:
			return nil, status.Errorf(codes.InvalidArgument, "networks[%d]: network %s is a %s network; machines join child or external networks", i, quote(id), networkTypeNames[n.GetType()])
		}
		out = append(out, n)
	}
	return out, nil
}

// pickWaiting locks a waiting machine for the request, or explains why
// there is none.
func (s *machineService) pickWaiting(ctx context.Context, tx pgx.Tx, req *apiv1.MachineServiceCreateRequest) (*apiv1.Machine, string, error) {
	if err := s.checkReservations(ctx, tx, req.GetPartitionId(), req.GetSizeId(), req.GetProjectId()); err != nil {
		return nil, "", err
	}
	picked, err := pickMachines(ctx, tx, req.GetPartitionId(), req.GetSizeId(), req.GetProjectId(), time.Now().Add(-s.cfg.AliveWithin), 1)
	if err != nil {
		return nil, "", err
	}
	if len(picked) == 0 {
		return nil, "", status.Errorf(codes.ResourceExhausted, "no waiting machine of size %s in partition %s is free", quote(req.GetSizeId()), quote(req.GetPartitionId()))
	}
	return picked[0].m, picked[0].agentID, nil
}

type pickedMachine struct {
	m       *apiv1.Machine
	agentID string
}

// pickMachines locks up to n waiting, alive, available, unowned machines
// of the size in the partition. Machines go round-robin over racks, the
// racks where the project has the fewest machines first, at random within
// a rack, so that a project spreads across racks. SKIP LOCKED lets
// concurrent allocations pass each other instead of queueing on one row;
// the outer condition is checked again on the locked row (written so that
// it cannot steer the planner to a quadratic join while statistics are
// stale), so a machine another transaction allocated meanwhile is never
// taken. Only the best ranked candidates are looked at, with room for the
// ones other allocations hold; when that is not enough, all of them.
func pickMachines(ctx context.Context, tx pgx.Tx, partition, size, project string, aliveSince time.Time, n int) ([]pickedMachine, error) {
	out, err := pickFrom(ctx, tx, partition, size, project, aliveSince, n, n+pickSlack)
	if err != nil || len(out) == n {
		return out, err
	}
	return pickFrom(ctx, tx, partition, size, project, aliveSince, n, math.MaxInt32)
}

// pickSlack is how many more candidates than wanted are ranked: enough to
// step over the machines concurrent allocations have locked.
const pickSlack = 256

func pickFrom(ctx context.Context, tx pgx.Tx, partition, size, project string, aliveSince time.Time, n, candidates int) ([]pickedMachine, error) {
	// Both CTEs are materialized: a handful of racks and the ranked
	// candidates, computed once whatever join the planner picks.
	rows, err := tx.Query(ctx, `WITH spread AS MATERIALIZED (
			SELECT rack, count(*) AS n FROM machines WHERE project_id = $3 AND partition_id = $1 GROUP BY rack
		), ranked AS MATERIALIZED (
			SELECT c.id, COALESCE(s.n, 0) + row_number() OVER (PARTITION BY c.rack ORDER BY random()) AS k
			FROM machines c
			JOIN agents a ON a.id = c.agent_id
			LEFT JOIN spread s ON s.rack = c.rack
			WHERE c.partition_id = $1 AND c.size_id = $2 AND c.project_id IS NULL AND c.state = 'available'
				AND c.provisioning = 'Waiting' AND a.last_contact > $4
			ORDER BY k
			LIMIT $6)
		SELECT m.agent_id, m.spec, m.generation, m.created_at, m.updated_at
		FROM ranked r JOIN machines m ON m.id = r.id
		WHERE (m.project_id, m.state, m.provisioning) IS NOT DISTINCT FROM (NULL, 'available', 'Waiting')
		ORDER BY r.k, random()
		LIMIT $5
		FOR UPDATE OF m SKIP LOCKED`, partition, size, project, aliveSince, n, candidates)
	if err != nil {
		return nil, fmt.Errorf("pick machines: %w", err)
	}
	defer rows.Close()
	var out []pickedMachine
	for rows.Next() {
		var (
			p                pickedMachine
			agentID          *string
			spec             []byte
			gen              int64
			created, updated time.Time
		)
		if err := rows.Scan(&agentID, &spec, &gen, &created, &updated); err != nil {
			return nil, fmt.Errorf("pick machines: %w", err)
		}
		p.m = &apiv1.Machine{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(spec, p.m); err != nil {
			return nil, fmt.Errorf("decode machine: %w", err)
		}
		p.m.Meta = &apiv1.Meta{CreatedAt: timestamppb.New(created), UpdatedAt: timestamppb.New(updated), Generation: uint64(gen)}
		if agentID != nil {
			p.agentID = *agentID
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pick machines: %w", err)
	}
	return out, nil
}

// checkReservations refuses an allocation that would eat into machines
// other projects have reserved. The reservations of the size and partition
// are locked, so concurrent allocations count one after the other; sizes
// without reservations take no lock at all.
func (s *machineService) checkReservations(ctx context.Context, tx pgx.Tx, partition, size, project string) error {
	reserved, err := countsBy(tx.Query(ctx, `SELECT project_id, amount FROM size_reservations WHERE partition_id = $1 AND size_id = $2 ORDER BY id FOR UPDATE`, partition, size))
	if err != nil {
		return fmt.Errorf("read reservations: %w", err)
	}
	if len(reserved) == 0 {
		return nil
	}
	projects := make([]string, 0, len(reserved))
	for p := range reserved {
		projects = append(projects, p)
	}
	used, err := countsBy(tx.Query(ctx, `SELECT project_id, count(*) FROM machines WHERE partition_id = $1 AND size_id = $2 AND project_id = ANY($3) GROUP BY project_id`, partition, size, projects))
	if err != nil {
		return fmt.Errorf("count reserved use: %w", err)
	}
	if reserved[project]-used[project] > 0 {
		return nil // the project takes from its own reservation
	}
	held := 0
	for p, n := range reserved {
		if p != project {
			held += max(0, n-used[p])
		}
	}
	var free int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM machines m JOIN agents a ON a.id = m.agent_id
		WHERE m.partition_id = $1 AND m.size_id = $2 AND m.project_id IS NULL AND m.state = 'available'
		AND m.provisioning = 'Waiting' AND a.last_contact > $3`, partition, size, time.Now().Add(-s.cfg.AliveWithin)).Scan(&free); err != nil {
		return fmt.Errorf("count free machines: %w", err)
	}
	if free-held <= 0 {
		return status.Errorf(codes.ResourceExhausted, "no machine of size %s in partition %s is free: %d waiting, %d held for reservations of other projects", quote(size), quote(partition), free, held)
	}
	return nil
}

// pickGiven locks the machine the caller named and checks it can be had.
func (s *machineService) pickGiven(ctx context.Context, tx pgx.Tx, req *apiv1.MachineServiceCreateRequest) (*apiv1.Machine, string, error) {
	var (
		id, state, prov string
		size, agentID   *string
		project         *string
		contact         *time.Time
	)
	err := tx.QueryRow(ctx, `SELECT m.id, m.state, m.provisioning, m.size_id, m.project_id, m.agent_id, a.last_contact
		FROM machines m LEFT JOIN agents a ON a.id = m.agent_id WHERE m.id = $1 FOR UPDATE OF m`, strings.ToLower(req.GetId())).
		Scan(&id, &state, &prov, &size, &project, &agentID, &contact)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, "", status.Errorf(codes.NotFound, "machine %s not found", quote(req.GetId()))
	}
	if err != nil {
		return nil, "", fmt.Errorf("read machine: %w", err)
	}
	switch {
	case project != nil:
		return nil, "", status.Errorf(codes.FailedPrecondition, "machine %s is already allocated", id)
	case state == "locked":
		return nil, "", status.Errorf(codes.FailedPrecondition, "machine %s is locked", id)
	case prov != string(fsm.Waiting):
		return nil, "", status.Errorf(codes.FailedPrecondition, "machine %s is %q, not Waiting", id, prov)
	case size == nil:
		return nil, "", status.Errorf(codes.FailedPrecondition, "machine %s matches no size", id)
	case req.GetSizeId() != "" && *size != req.GetSizeId():
		return nil, "", status.Errorf(codes.FailedPrecondition, "machine %s is of size %s, not %s", id, quote(*size), quote(req.GetSizeId()))
	case agentID == nil || contact == nil || contact.Before(time.Now().Add(-s.cfg.AliveWithin)):
		return nil, "", status.Errorf(codes.FailedPrecondition, "machine %s is not alive", id)
	}
	m, err := machines.Get(ctx, tx, id)
	if err != nil {
		return nil, "", err
	}
	return m, *agentID, nil
}

// takeMachineIPs takes one address per address family of every network
// for the machine, inside the allocation's transaction, and describes the
// networks for the installer.
func (s *machineService) takeMachineIPs(ctx context.Context, tx pgx.Tx, machine, project string, nets []*apiv1.Network, alloc *apiv1.MachineAllocation) ([]*agentv1.MachineNetwork, error) {
	var out []*agentv1.MachineNetwork
	for _, n := range nets {
		prefixes, err := networkPrefixes(ctx, tx, n)
		if err != nil {
			return nil, err
		}
		mn := &agentv1.MachineNetwork{NetworkId: n.GetId(), Prefixes: n.GetPrefixes(), Vrf: n.GetVrf(),
			Private: n.GetType() == apiv1.NetworkType_NETWORK_TYPE_CHILD, Underlay: n.GetType() == apiv1.NetworkType_NETWORK_TYPE_UNDERLAY}
		for _, fam := range []int{4, 6} {
			if !slices.ContainsFunc(prefixes, func(p prefixRow) bool { return ipam.Family(p.prefix) == fam }) {
				continue
			}
			addr, pool, err := takeAddress(ctx, tx, prefixes, netip.Addr{}, fam)
			if err != nil {
				return nil, err
			}
			ip := &apiv1.IP{Ip: addr.String(), NetworkId: n.GetId(), ProjectId: project, Type: apiv1.IPType_IP_TYPE_EPHEMERAL,
				Name: alloc.GetHostname(), Description: "machine " + machine}
			if _, err := ips.Insert(ctx, tx, ip.GetIp(), ip, store.Col{Name: "pool_id", Val: pool}, store.Col{Name: "unit", Val: ipam.AddrUnit(addr).String()},
				store.Col{Name: "network_id", Val: n.GetId()}, store.Col{Name: "project_id", Val: project}, store.Col{Name: "type", Val: "ephemeral"}, store.Col{Name: "machine_id", Val: machine}); err != nil {
				return nil, err
			}
			mn.Ips = append(mn.Ips, ip.GetIp())
			alloc.Ips = append(alloc.Ips, ip.GetIp())
		}
		out = append(out, mn)
	}
	return out, nil
}

// setMachineDocument edits the machine document of the machine's agent.
func (s *machineService) setMachineDocument(ctx context.Context, tx pgx.Tx, agentID, machine string, edit func(*agentv1.MachineDocument)) error {
	if s.fleet == nil || agentID == "" {
		return nil
	}
	_, err := s.fleet.Change(ctx, tx, agentID, func(d *agentv1.Desired) (bool, error) {
		md := proto.Clone(d.GetMachine()).(*agentv1.MachineDocument)
		if md == nil {
			md = &agentv1.MachineDocument{}
		}
		md.MachineId = machine
		edit(md)
		if proto.Equal(md, d.GetMachine()) {
			return false, nil
		}
		d.Machine = md
		return true, nil
	})
	return err
}

// chooseLayout picks the filesystem layout: the one asked for, else the
// first (by id) whose constraints name the size and accept the image,
// else a default on the machine's first disk.
func chooseLayout(ctx context.Context, tx pgx.Tx, id string, all []*apiv1.FilesystemLayout, m *apiv1.Machine, img *apiv1.Image) (*apiv1.FilesystemLayout, error) {
	if id != "" {
		for _, l := range all {
			if l.GetId() == id {
				return l, nil
			}
		}
		return nil, status.Errorf(codes.NotFound, "filesystem layout %s not found", quote(id))
	}
	for _, l := range all {
		c := l.GetConstraints()
		if !slices.Contains(c.GetSizes(), m.GetSizeId()) {
			continue
		}
		if want, ok := c.GetImages()[img.GetOs()]; ok || len(c.GetImages()) == 0 {
			if len(c.GetImages()) == 0 || versionAccepts(want, img.GetVersion()) {
				return l, nil
			}
		}
	}
	return defaultLayout(m)
}

// defaultLayout is an EFI system partition and one ext4 root on the first
// disk (by name): what a machine without a configured layout gets.
func defaultLayout(m *apiv1.Machine) (*apiv1.FilesystemLayout, error) {
	disks := m.GetHardware().GetDisks()
	if len(disks) == 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "machine %s reported no disks and no filesystem layout applies", m.GetId())
	}
	names := make([]string, 0, len(disks))
	for _, d := range disks {
		names = append(names, d.GetName())
	}
	sort.Strings(names)
	dev := "/dev/" + names[0]
	return &apiv1.FilesystemLayout{
		Id: "default", Name: "default",
		Disks: []*agentv1.Disk{{Device: dev, WipeOnReinstall: true, Partitions: []*agentv1.DiskPartition{
			{Number: 1, Label: "efi", SizeBytes: 256 << 20, GptType: "ef00"},
			{Number: 2, Label: "root", GptType: "8300"},
		}}},
		Filesystems: []*agentv1.Filesystem{
			{Path: "/boot/efi", Device: partitionDevice(dev, 1), Format: "vfat", Label: "efi"},
			{Path: "/", Device: partitionDevice(dev, 2), Format: "ext4", Label: "root"},
		},
	}, nil
}

func layoutDoc(l *apiv1.FilesystemLayout) *agentv1.Layout {
	return &agentv1.Layout{Disks: l.GetDisks(), Raids: l.GetRaids(), VolumeGroups: l.GetVolumeGroups(),
		LogicalVolumes: l.GetLogicalVolumes(), Filesystems: l.GetFilesystems()}
}

// versionAccepts evaluates a constraint such as ">= 12.0", "< 13", "12.1.0"
// or "*" against a semantic version.
func versionAccepts(constraint, version string) bool {
	c := strings.TrimSpace(constraint)
	if c == "" || c == "*" {
		return true
	}
	op := "="
	for _, o := range []string{">=", "<=", "!=", ">", "<", "="} {
		if rest, ok := strings.CutPrefix(c, o); ok {
			op, c = o, strings.TrimSpace(rest)
			break
		}
	}
	want, ok1 := parseSemver(c)
	have, ok2 := parseSemver(version)
	if !ok1 || !ok2 {
		return false
	}
	switch op {
	case ">=":
		return !have.less(want)
	case "<=":
		return !want.less(have)
	case ">":
		return want.less(have)
	case "<":
		return have.less(want)
	case "!=":
		return have.less(want) || want.less(have)
	}
	return !have.less(want) && !want.less(have)
}

// Delete frees a machine: its ephemeral IPs go back to their pools, static
// ones stay with the project, the installed system is rebooted into PXE
// (reboot intent) where the installer wipes the disks and waits again.
func (s *machineService) Delete(ctx context.Context, req *apiv1.MachineServiceDeleteRequest) (*apiv1.MachineServiceDeleteResponse, error) {
	err := s.store.Tx(ctx, func(tx pgx.Tx) error {
		m, agentID, err := s.lockOwned(ctx, tx, req.GetId())
		if err != nil {
			return err
		}
		project := m.GetAllocation().GetProjectId()
		if err := releaseMachineIPs(ctx, tx, m.GetId()); err != nil {
			return err
		}
		m.Allocation = nil
		spec, err := store.EncodeSpec(m)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE machines SET project_id = NULL, allocation_id = NULL, installed = FALSE, spec = $2,
			generation = generation + 1, updated_at = now() WHERE id = $1`, m.GetId(), spec); err != nil {
			return fmt.Errorf("free machine: %w", err)
		}
		if err := recordEvent(ctx, tx, m.GetId(), string(fsm.MachineReclaim), "freed by "+"token "+auth.PrincipalFrom(ctx).TokenID); err != nil {
			return err
		}
		if err := s.setMachineDocument(ctx, tx, agentID, m.GetId(), func(md *agentv1.MachineDocument) {
			md.Allocation = nil
			md.RebootGeneration++
			md.WipeGeneration++
		}); err != nil {
			return err
		}
		return store.Audit(ctx, tx, "machine/"+m.GetId(), project)
	})
	if err != nil {
		return nil, toStatus(err, "machine "+quote(req.GetId()))
	}
	m, err := s.readMachine(ctx, s.store.Pool(), req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.MachineServiceDeleteResponse{Machine: m}, nil
}

// lockOwned locks an allocated machine that is not locked.
func (s *machineService) lockOwned(ctx context.Context, tx pgx.Tx, id string) (*apiv1.Machine, string, error) {
	m, err := machines.GetForUpdate(ctx, tx, id)
	if err != nil {
		return nil, "", err
	}
	var project, agentID *string
	var state string
	if err := tx.QueryRow(ctx, `SELECT project_id, agent_id, state FROM machines WHERE id = $1`, id).Scan(&project, &agentID, &state); err != nil {
		return nil, "", err
	}
	if project == nil {
		return nil, "", status.Errorf(codes.FailedPrecondition, "machine %s is not allocated", id)
	}
	if state == "locked" {
		return nil, "", status.Errorf(codes.FailedPrecondition, "machine %s is locked (%s): unlock it first", id, m.GetStateReason())
	}
	if agentID == nil {
		return m, "", nil
	}
	return m, *agentID, nil
}

// textPairs reads rows of two text columns.
func textPairs(rows pgx.Rows) ([][2]string, error) {
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]string, error) {
		var p [2]string
		err := r.Scan(&p[0], &p[1])
		return p, err
	})
}

// countsBy sums rows of (key, count) by key.
func countsBy(rows pgx.Rows, err error) (map[string]int, error) {
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	_, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (struct{}, error) {
		var k string
		var n int
		err := r.Scan(&k, &n)
		out[k] += n
		return struct{}{}, err
	})
	return out, err
}

func releaseMachineIPs(ctx context.Context, tx pgx.Tx, machine string) error {
	rows, err := tx.Query(ctx, `DELETE FROM ips WHERE machine_id = $1 AND type = 'ephemeral' RETURNING pool_id, unit::TEXT`, machine)
	if err != nil {
		return fmt.Errorf("release ips: %w", err)
	}
	units, err := textPairs(rows)
	if err != nil {
		return fmt.Errorf("release ips: %w", err)
	}
	for _, u := range units {
		if err := ipam.Release(ctx, tx, u[0], mustUnit(u[1])); err != nil {
			return fmt.Errorf("release ip unit: %w", err)
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE ips SET machine_id = NULL, updated_at = now() WHERE machine_id = $1`, machine); err != nil {
		return fmt.Errorf("detach static ips: %w", err)
	}
	return nil
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
	err := s.store.Tx(ctx, func(tx pgx.Tx) error {
		m, agentID, err := s.lockOwned(ctx, tx, req.GetId())
		if err != nil {
			return err
		}
		imageID := req.GetImageId()
		if imageID == "" {
			imageID = m.GetAllocation().GetImageId()
		}
		img, err := usableImage(ctx, tx, imageID)
		if err != nil {
			return err
		}
		alloc := m.GetAllocation()
		alloc.Id, alloc.ImageId, alloc.PhonedHomeAt = uuid.NewString(), img.GetId(), nil
		spec, err := store.EncodeSpec(m)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE machines SET allocation_id = $2, installed = FALSE, spec = $3,
			generation = generation + 1, updated_at = now() WHERE id = $1`, m.GetId(), alloc.GetId(), spec); err != nil {
			return fmt.Errorf("reinstall machine: %w", err)
		}
		if err := logEvent(ctx, tx, m.GetId(), "Reinstall", "image "+img.GetId()+" requested by "+"token "+auth.PrincipalFrom(ctx).TokenID); err != nil {
			return err
		}
		if err := s.setMachineDocument(ctx, tx, agentID, m.GetId(), func(md *agentv1.MachineDocument) {
			if md.Allocation == nil {
				return
			}
			md.Allocation.Id = alloc.GetId()
			md.Allocation.Image = &agentv1.ImageRef{Id: img.GetId(), Os: img.GetOs(), Version: img.GetVersion(), Url: img.GetUrl(), Sha256: img.GetSha256()}
			md.Allocation.Reinstall = true
			md.RebootGeneration++
		}); err != nil {
			return err
		}
		return store.Audit(ctx, tx, "machine/"+m.GetId(), alloc.GetProjectId())
	})
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
	var name string
	for n, st := range machineStates {
		if st == req.GetState() {
			name = n
		}
	}
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
	err := s.store.Tx(ctx, func(tx pgx.Tx) error {
		m, err := machines.GetForUpdate(ctx, tx, req.GetId())
		if err != nil {
			return err
		}
		m.State, m.StateReason = req.GetState(), req.GetReason()
		if name == "available" {
			m.StateReason = ""
		}
		spec, err := store.EncodeSpec(m)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE machines SET state = $2, spec = $3, generation = generation + 1, updated_at = now() WHERE id = $1`,
			m.GetId(), name, spec); err != nil {
			return err
		}
		if err := logEvent(ctx, tx, m.GetId(), "State", strings.TrimSpace(name+" "+req.GetReason())); err != nil {
			return err
		}
		var project *string
		if err := tx.QueryRow(ctx, `SELECT project_id FROM machines WHERE id = $1`, m.GetId()).Scan(&project); err != nil {
			return err
		}
		p := ""
		if project != nil {
			p = *project
		}
		return store.Audit(ctx, tx, "machine/"+m.GetId(), p)
	})
	if err != nil {
		return nil, toStatus(err, "machine "+quote(req.GetId()))
	}
	m, err := s.readMachine(ctx, s.store.Pool(), req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.MachineServiceSetStateResponse{Machine: m}, nil
}
