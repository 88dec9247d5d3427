package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/metalfleet/metalfleet/central/internal/ipam"
	"github.com/metalfleet/metalfleet/central/internal/pgtest"
	"github.com/metalfleet/metalfleet/central/internal/store"
	"github.com/metalfleet/metalfleet/central/internal/storetest"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m, &pg)) }

// The projects every lab has; other is for "another project's network".
const (
	project = "11111111-1111-4111-8111-111111111111"
	other   = "22222222-2222-4222-8222-222222222222"
	// gone is a project id no row has.
	gone = "00000000-0000-4000-8000-000000000000"
)

// lab is a Networks on a fresh database with the VRF pool, a tenant with
// two projects and the partitions p1, p2 and p3, and a context carrying an
// authenticated call, as the API's interceptor leaves it.
type lab struct {
	t   *testing.T
	ctx context.Context
	st  *store.Store
	ns  *Networks
}

func newLab(t *testing.T) *lab {
	t.Helper()
	ctx := storetest.AdminCall(context.Background(), "/test")
	st := storetest.Open(ctx, t, pg)
	// The rows of other aggregates a network refers to, written here as
	// their owners would.
	if err := st.Tx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO tenants (id, spec) VALUES ('t', '{}');
			INSERT INTO projects (id, tenant_id, name, spec) VALUES ('`+project+`', 't', 'a', '{}'), ('`+other+`', 't', 'b', '{}');
			INSERT INTO partitions (id, spec) VALUES ('p1', '{}'), ('p2', '{}'), ('p3', '{}')`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ns := New(st, nil)
	if err := ns.EnsureVRFPool(ctx, 10000, 10999); err != nil {
		t.Fatal(err)
	}
	return &lab{t: t, ctx: ctx, st: st, ns: ns}
}

// create makes a super, underlay or external network with prefixes.
func (l *lab) create(n *apiv1.Network) *apiv1.Network {
	l.t.Helper()
	var prefixes []netip.Prefix
	for _, p := range n.GetPrefixes() {
		prefixes = append(prefixes, netip.MustParsePrefix(p))
	}
	out, err := l.ns.Create(l.ctx, n, prefixes)
	if err != nil {
		l.t.Fatalf("create network %s: %v", n.GetId(), err)
	}
	return out
}

// newIP is an ephemeral IP of the lab's project to take from network.
func newIP(network string) *apiv1.IP {
	return &apiv1.IP{NetworkId: network, ProjectId: project, Type: apiv1.IPType_IP_TYPE_EPHEMERAL}
}

// external makes an external network of prefixes.
func (l *lab) external(id string, prefixes ...string) *apiv1.Network {
	return l.create(&apiv1.Network{Id: id, Type: apiv1.NetworkType_NETWORK_TYPE_EXTERNAL, Prefixes: prefixes})
}

// count runs a counting query.
func (l *lab) count(sql string, args ...any) int {
	l.t.Helper()
	var n int
	if err := l.st.Pool().QueryRow(l.ctx, sql, args...).Scan(&n); err != nil {
		l.t.Fatal(err)
	}
	return n
}

// free is how many units of a pool are free.
func (l *lab) free(pool string) int64 {
	l.t.Helper()
	_, free, err := ipam.Usage(l.ctx, l.st.Pool(), pool)
	if err != nil {
		l.t.Fatal(err)
	}
	return free.Int64()
}

// result is what a call returned, comparable across runs on different
// databases: the object without its times and without the ids that are
// fresh uuids (a child network's, and so its IPs' network), or the
// error's code and message.
type result struct {
	m   proto.Message
	err string
}

func resultOf(m proto.Message, err error) result {
	if err != nil {
		var ne *Error
		if errors.As(err, &ne) {
			err = ne.Err
		}
		s := status.Convert(err)
		return result{err: s.Code().String() + ": " + s.Message()}
	}
	m = proto.Clone(m)
	store.SetMeta(m, &apiv1.Meta{Generation: m.(interface{ GetMeta() *apiv1.Meta }).GetMeta().GetGeneration()})
	switch m := m.(type) {
	case *apiv1.Network:
		m.Id = ""
	case *apiv1.IP:
		m.NetworkId = ""
	}
	return result{m: m}
}

func (r result) String() string {
	if r.m == nil {
		return r.err
	}
	return fmt.Sprint(r.m)
}

// sameResults fails unless two runs' results agree call by call.
func sameResults(t *testing.T, what string, a, b []result) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%s: %d results against %d", what, len(a), len(b))
	}
	for i := range a {
		if a[i].err != b[i].err || !proto.Equal(a[i].m, b[i].m) {
			t.Errorf("%s: call %d: %v against %v", what, i, a[i], b[i])
		}
	}
}

// wantCode checks err's gRPC code, looking through *Error.
func wantCode(t *testing.T, err error, code codes.Code) {
	t.Helper()
	var ne *Error
	if errors.As(err, &ne) {
		err = ne.Err
	}
	if got := status.Code(err); got != code {
		t.Fatalf("error %v: code %v, want %v", err, got, code)
	}
}
