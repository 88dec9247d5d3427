package sonic

import "fmt"

// Schema is a port naming schema: which of a port's SONiC name and alias
// central sees as the port's name, and which as its identifier, the port
// id a machine on the port sees in LLDP. It has to fit what the switch's
// lldpd sends: SONiC's sends the alias.
type Schema string

// The schemas of metal-stack's metal-core (INTERFACE_NAMING_SCHEMA).
const (
	// SchemaDefault: name is the SONiC name, identifier the alias.
	SchemaDefault Schema = "default"
	// SchemaSwap: name is the alias, identifier the SONiC name.
	SchemaSwap Schema = "swap"
	// SchemaName: both are the SONiC name.
	SchemaName Schema = "name"
	// SchemaAlias: both are the alias.
	SchemaAlias Schema = "alias"
)

// ParseSchema checks a schema's name; "" is the default.
func ParseSchema(s string) (Schema, error) {
	switch Schema(s) {
	case "":
		return SchemaDefault, nil
	case SchemaDefault, SchemaSwap, SchemaName, SchemaAlias:
		return Schema(s), nil
	}
	return "", fmt.Errorf("port naming schema %q: want default, swap, name or alias", s)
}

// Names returns a port's name and identifier under the schema. A port
// without an alias is known by its SONiC name only.
func (s Schema) Names(sonicName, alias string) (name, identifier string) {
	if alias == "" {
		alias = sonicName
	}
	switch s {
	case SchemaSwap:
		return alias, sonicName
	case SchemaName:
		return sonicName, sonicName
	case SchemaAlias:
		return alias, alias
	}
	return sonicName, alias
}

// Naming maps port names under a schema to SONiC names and back.
type Naming struct {
	toSONiC   map[string]string
	fromSONiC map[string]string
}

// Resolve returns the SONiC name of a port's name; false when there is no
// such port.
func (n *Naming) Resolve(name string) (string, bool) {
	s, ok := n.toSONiC[name]
	return s, ok
}

// Name returns a SONiC port's name under the schema; the SONiC name itself
// for a port that is not in the PORT table.
func (n *Naming) Name(sonicName string) string {
	if s, ok := n.fromSONiC[sonicName]; ok {
		return s
	}
	return sonicName
}
