package cli

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"sigs.k8s.io/yaml"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// TestOneVocabularyInEveryFormat: the words a person reads in the machine
// table (lock state, provisioning state, liveliness) are the values of
// the JSON, YAML and template output too, 64-bit integers are numbers,
// and the lock column does not call a machine "available".
func TestOneVocabularyInEveryFormat(t *testing.T) {
	t.Parallel()
	_, addr := startFake(t)
	table := runAt(t, addr, "machine", "list")
	mustSucceed(t, table)
	lines := strings.Split(strings.TrimSpace(table.stdout), "\n")
	// Cells start where their header starts (tabwriter), also when a
	// machine without size or rack leaves cells empty.
	cell := func(line, header string) string {
		i := strings.Index(lines[0], header)
		if i < 0 {
			t.Fatalf("no column %s in %q", header, lines[0])
		}
		if i >= len(line) {
			return ""
		}
		f := strings.Fields(line[i:])
		if len(f) == 0 {
			return ""
		}
		return strings.TrimSuffix(f[0], ",")
	}
	if strings.Contains(table.stdout, "available") {
		t.Errorf("the table says available:\n%s", table.stdout)
	}
	type row struct{ lock, provisioning, liveliness string }
	want := map[string]row{}
	for _, l := range lines[1:] {
		want[strings.Fields(l)[0]] = row{cell(l, "LOCK"), cell(l, "PROVISIONING"), cell(l, "STATUS")}
	}
	if len(want) < 3 {
		t.Fatalf("rows: %v", want)
	}

	for _, format := range []string{"json", "yaml"} {
		t.Run(format, func(t *testing.T) {
			r := runAt(t, addr, "machine", "list", "-o", format)
			mustSucceed(t, r)
			b := []byte(r.stdout)
			if format == "yaml" {
				var err error
				if b, err = yaml.YAMLToJSON(b); err != nil {
					t.Fatal(err)
				}
			}
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.UseNumber()
			var ms []map[string]any
			if err := dec.Decode(&ms); err != nil {
				t.Fatal(err)
			}
			for _, m := range ms {
				got := row{m["state"].(string), m["provisioning"].(string), m["liveliness"].(string)}
				if w := want[m["id"].(string)]; got != w {
					t.Errorf("machine %s: %s says %+v, the table %+v", m["id"], format, got, w)
				}
				if g, ok := m["meta"].(map[string]any)["generation"].(json.Number); !ok {
					t.Errorf("machine %s: meta.generation is %T in %s, want a number", m["id"], m["meta"].(map[string]any)["generation"], format)
				} else if g.String() != "1" {
					t.Errorf("machine %s: generation %s", m["id"], g)
				}
			}
		})
	}
	r := runAt(t, addr, "machine", "list", "--template", "{{.id}} {{.state}} {{.provisioning}} {{.liveliness}}")
	mustSucceed(t, r)
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		f := strings.Fields(l)
		if w := want[f[0]]; (row{f[1], f[2], f[3]}) != w {
			t.Errorf("template: %q, the table %+v", l, w)
		}
	}
}

// TestInputReadsWhatOutputPrints: apply and create -f take the YAML that
// -o yaml prints (enum words, numbers) as well as the proto names, and
// get the same message.
func TestInputReadsWhatOutputPrints(t *testing.T) {
	t.Parallel()
	protoName := regexp.MustCompile(`[A-Z]+_[A-Z_]+|"[0-9]+"`)
	ts := timestamppb.New(timestamppb.Now().AsTime().Truncate(1e9))
	for _, tc := range []struct {
		name  string
		msg   proto.Message
		proto string // the same object in protojson's own form
	}{
		{"size", &apiv1.Size{Id: "s1", Constraints: []*apiv1.SizeConstraint{
			{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_MEMORY, Min: 1 << 30, Max: 1<<64 - 1},
		}, Meta: &apiv1.Meta{Generation: 7, CreatedAt: ts}},
			`{"id":"s1","constraints":[{"type":"SIZE_CONSTRAINT_TYPE_MEMORY","min":"1073741824","max":"18446744073709551615"}]}`},
		{"machine", &apiv1.Machine{Id: "m1", State: apiv1.MachineState_MACHINE_STATE_AVAILABLE,
			Provisioning: apiv1.ProvisioningState_PROVISIONING_STATE_BOOTING_NEW_KERNEL, Liveliness: apiv1.Liveliness_LIVELINESS_ALIVE},
			`{"id":"m1","state":"MACHINE_STATE_AVAILABLE","provisioning":"PROVISIONING_STATE_BOOTING_NEW_KERNEL"}`},
		{"token", &apiv1.Token{Id: "t", AdminRole: apiv1.Level_LEVEL_VIEWER,
			ProjectRoles: map[string]apiv1.Level{"p1": apiv1.Level_LEVEL_OWNER}},
			`{"id":"t","admin_role":"LEVEL_VIEWER","project_roles":{"p1":"LEVEL_OWNER"}}`},
		{"agent", &apiv1.Agent{Id: "a", Kind: agentv1.Kind_KIND_SWITCH, DesiredRevision: 3},
			`{"id":"a","kind":"KIND_SWITCH","desired_revision":"3"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := printOne(&printer{format: formatYAML, w: &buf}, nil, tc.msg); err != nil {
				t.Fatal(err)
			}
			if protoName.MatchString(buf.String()) {
				t.Errorf("proto enum names in the output:\n%s", buf.String())
			}
			newObj := func() proto.Message { return tc.msg.ProtoReflect().New().Interface() }
			got, err := decodeObjects(buf.Bytes(), newObj)
			if err != nil {
				t.Fatalf("%v\n%s", err, buf.String())
			}
			if !proto.Equal(tc.msg, got[0]) {
				t.Errorf("read back %v, printed %v from:\n%s", got[0], tc.msg, buf.String())
			}
			// The proto names stay readable.
			if _, err := decodeObjects([]byte(tc.proto), newObj); err != nil {
				t.Errorf("protojson form: %v", err)
			}
		})
	}
}

// TestBMCWords: the words metalctl shows for what central reports from
// metal-bmc — a machine known only from its BMC, power states, LEDs.
func TestBMCWords(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		e    protoreflect.Enum
		want string
	}{
		{apiv1.ProvisioningState_PROVISIONING_STATE_KNOWN_FROM_BMC, "known-from-bmc"},
		{agentv1.BmcPowerState_BMC_POWER_STATE_OFF, "off"},
		{agentv1.BmcLed_BMC_LED_LIT, "lit"},
		{agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_INTERRUPTED, "interrupted"},
	} {
		if got := enumShort(tc.e); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.e, got, tc.want)
		}
	}
}
