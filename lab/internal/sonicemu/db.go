// Package sonicemu is the lab's SONiC emulation: it reads what metal-core
// (and the lab's base configuration) wrote into CONFIG_DB and renders it
// onto Linux with `ip` and `bridge`, as SONiC's managers (portmgrd,
// vlanmgrd, vrfmgrd, intfmgrd, vxlanmgrd) do on a real switch. So the
// lab's leaves run the real metal-core against a real Redis and every
// difference from SONiC lives here (docs/lab.md lists them).
//
// It is split so that the interesting part is a pure function: Read turns
// CONFIG_DB into a State, Plan turns the previous and the desired State
// into an ordered list of idempotent commands, Executor runs them, and
// Watch drives the three from keyspace notifications and a periodic
// resync. Beside that, as SONiC's other daemons: Relays runs a dhcrelay
// per VLAN with DHCP servers (the dhcp_relay container), and Observer
// writes the ports' oper state and LLDP neighbours back into APPL_DB
// (portsyncd/orchagent, lldp_syncd), which metal-core reports.
package sonicemu

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultDBConfig is where SONiC keeps its database_config.json.
const DefaultDBConfig = "/var/run/redis/sonic-db/database_config.json"

// The databases the emulation uses: it reads CONFIG_DB and writes what
// SONiC's daemons observe (port oper state, LLDP neighbours) into APPL_DB.
const (
	configDB = "CONFIG_DB"
	applDB   = "APPL_DB"
)

// dbConfig is SONiC's database_config.json. metal-core has its own reader
// (agents/metalcore/internal/sonic), which lab/ cannot import (Go's
// internal rule); this one reads the same file the same way.
type dbConfig struct {
	Instances map[string]struct {
		Hostname       string `json:"hostname"`
		Port           int    `json:"port"`
		UnixSocketPath string `json:"unix_socket_path"`
	} `json:"INSTANCES"`
	Databases map[string]struct {
		ID        int    `json:"id"`
		Separator string `json:"separator"`
		Instance  string `json:"instance"`
	} `json:"DATABASES"`
}

// Open connects to CONFIG_DB as database_config.json at path describes
// it and returns the client and the key separator.
func Open(path string) (*redis.Client, string, error) {
	return OpenDB(path, configDB)
}

// OpenAppl connects to APPL_DB (database 0, ":" on SONiC) as
// database_config.json at path describes it.
func OpenAppl(path string) (*redis.Client, string, error) {
	return OpenDB(path, applDB)
}

// OpenDB connects to the database name (CONFIG_DB, APPL_DB, …) as
// database_config.json at path describes it and returns the client and
// the database's key separator.
func OpenDB(path, name string) (*redis.Client, string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("database config: %w", err)
	}
	var c dbConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, "", fmt.Errorf("database config %s: %w", path, err)
	}
	db, ok := c.Databases[name]
	if !ok {
		return nil, "", fmt.Errorf("database config %s: no %s", path, name)
	}
	inst, ok := c.Instances[db.Instance]
	if !ok {
		return nil, "", fmt.Errorf("database config %s: %s: no instance %q", path, name, db.Instance)
	}
	o := &redis.Options{
		DB: db.ID, ClientName: "sonic-emu",
		// RESP2 and no CLIENT SETINFO: what every Redis a switch runs speaks.
		Protocol: 2, DisableIdentity: true,
		DialTimeout: 2 * time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second,
	}
	switch {
	case inst.UnixSocketPath != "":
		o.Network, o.Addr = "unix", inst.UnixSocketPath
	case inst.Hostname != "" && inst.Port != 0:
		o.Network, o.Addr = "tcp", net.JoinHostPort(inst.Hostname, strconv.Itoa(inst.Port))
	default:
		return nil, "", fmt.Errorf("database config %s: instance %q has neither unix_socket_path nor hostname and port", path, db.Instance)
	}
	sep := db.Separator
	if sep == "" {
		// SONiC's defaults: "|" for CONFIG_DB and STATE_DB, ":" for the rest.
		sep = ":"
		if name == configDB || name == "STATE_DB" {
			sep = "|"
		}
	}
	return redis.NewClient(o), sep, nil
}
