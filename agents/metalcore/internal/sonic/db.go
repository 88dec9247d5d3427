// Package sonic is metal-core's SONiC backend: it writes a switch's
// desired state into CONFIG_DB, the Redis database SONiC's managers render
// onto the ASIC and Linux, and reads the switch's ports, link states and
// LLDP neighbours from CONFIG_DB, APPL_DB and STATE_DB.
//
// It writes exactly the tables, keys and fields metal-stack's metal-core
// writes (docs/network.md): a real SONiC switch must accept every row.
package sonic

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// SONiC's database names in database_config.json.
const (
	ApplDB     = "APPL_DB"
	AsicDB     = "ASIC_DB"
	CountersDB = "COUNTERS_DB"
	ConfigDB   = "CONFIG_DB"
	StateDB    = "STATE_DB"
)

// DefaultDBConfig is where SONiC keeps its database_config.json.
const DefaultDBConfig = "/var/run/redis/sonic-db/database_config.json"

// DBConfig is SONiC's database_config.json: Redis instances and the
// databases (id and key separator) inside them.
type DBConfig struct {
	Instances map[string]Instance `json:"INSTANCES"`
	Databases map[string]Database `json:"DATABASES"`
}

// Instance is one Redis server. SONiC's own clients prefer the unix
// socket; hostname and port are for clients outside the host.
type Instance struct {
	Hostname       string `json:"hostname"`
	Port           int    `json:"port"`
	UnixSocketPath string `json:"unix_socket_path"`
}

// Database is one numbered Redis database of an instance.
type Database struct {
	ID        int    `json:"id"`
	Separator string `json:"separator"`
	Instance  string `json:"instance"`
}

// LoadDBConfig reads and checks a database_config.json.
func LoadDBConfig(path string) (*DBConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("database config: %w", err)
	}
	var c DBConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("database config %s: %w", path, err)
	}
	for _, name := range []string{ConfigDB, ApplDB} {
		if _, err := c.options(name); err != nil {
			return nil, fmt.Errorf("database config %s: %w", path, err)
		}
	}
	return &c, nil
}

// options are the go-redis options of database name.
func (c *DBConfig) options(name string) (*redis.Options, error) {
	db, ok := c.Databases[name]
	if !ok {
		return nil, fmt.Errorf("no database %s", name)
	}
	inst, ok := c.Instances[db.Instance]
	if !ok {
		return nil, fmt.Errorf("database %s: no instance %q", name, db.Instance)
	}
	o := &redis.Options{
		DB:         db.ID,
		ClientName: "metal-core",
		// SONiC's Redis may predate RESP3 and CLIENT SETINFO; RESP2 is
		// what every version speaks.
		Protocol:        2,
		DisableIdentity: true,
		DialTimeout:     2 * time.Second,
		ReadTimeout:     5 * time.Second,
		WriteTimeout:    5 * time.Second,
		MaxRetries:      1,
	}
	switch {
	case inst.UnixSocketPath != "":
		o.Network, o.Addr = "unix", inst.UnixSocketPath
	case inst.Hostname != "" && inst.Port != 0:
		o.Network, o.Addr = "tcp", net.JoinHostPort(inst.Hostname, strconv.Itoa(inst.Port))
	default:
		return nil, fmt.Errorf("instance %q: neither unix_socket_path nor hostname and port", db.Instance)
	}
	return o, nil
}

// separator of database name, with SONiC's defaults when the file has
// none.
func (c *DBConfig) separator(name string) string {
	if s := c.Databases[name].Separator; s != "" {
		return s
	}
	switch name {
	case ConfigDB, StateDB:
		return "|"
	}
	return ":"
}

// DB is one of SONiC's databases.
type DB struct {
	*redis.Client
	// Name is the database's name (CONFIG_DB …); Sep its key separator.
	Name string
	Sep  string
}

// Key joins a table and its item parts with the database's separator.
func (d *DB) Key(table string, parts ...string) string {
	k := table
	for _, p := range parts {
		k += d.Sep + p
	}
	return k
}

// Switch is a connection to a SONiC switch's databases.
type Switch struct {
	cfg      *DBConfig
	log      *slog.Logger
	config   *DB
	appl     *DB
	state    *DB
	asic     *DB
	counters *DB
	// asicTimeout bounds the wait for the ASIC to let go of a port.
	asicTimeout time.Duration
	// asicPoll is how often the ASIC state is read while waiting.
	asicPoll time.Duration
}

// Option changes how Open connects.
type Option func(*Switch)

// WithHook adds a go-redis hook to the CONFIG_DB client (metrics, tests).
func WithHook(h redis.Hook) Option { return func(s *Switch) { s.config.AddHook(h) } }

// WithASICTimeout bounds how long a port may take to leave the ASIC's
// router interfaces or bridge before its change counts as failed.
func WithASICTimeout(d time.Duration) Option { return func(s *Switch) { s.asicTimeout = d } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Switch) { s.log = l } }

// Open connects to the databases of cfg. Connections are made on first
// use; CONFIG_DB and APPL_DB are required, STATE_DB, ASIC_DB and
// COUNTERS_DB are used when the configuration has them.
func Open(cfg *DBConfig, opts ...Option) (*Switch, error) {
	s := &Switch{cfg: cfg, log: slog.New(slog.DiscardHandler), asicTimeout: 10 * time.Second, asicPoll: 100 * time.Millisecond}
	for _, name := range []string{ConfigDB, ApplDB, StateDB, AsicDB, CountersDB} {
		o, err := cfg.options(name)
		if err != nil {
			if name == ConfigDB || name == ApplDB {
				return nil, err
			}
			continue
		}
		db := &DB{Client: redis.NewClient(o), Name: name, Sep: cfg.separator(name)}
		switch name {
		case ConfigDB:
			s.config = db
		case ApplDB:
			s.appl = db
		case StateDB:
			s.state = db
		case AsicDB:
			s.asic = db
		case CountersDB:
			s.counters = db
		}
	}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// Close closes every connection.
func (s *Switch) Close() error {
	var errs []error
	for _, db := range s.dbs() {
		errs = append(errs, db.Close())
	}
	return errors.Join(errs...)
}

func (s *Switch) dbs() []*DB {
	var out []*DB
	for _, db := range []*DB{s.config, s.appl, s.state, s.asic, s.counters} {
		if db != nil {
			out = append(out, db)
		}
	}
	return out
}

// Config is CONFIG_DB.
func (s *Switch) Config() *DB { return s.config }

// Appl is APPL_DB.
func (s *Switch) Appl() *DB { return s.appl }

// State is STATE_DB, nil when the configuration has none.
func (s *Switch) State() *DB { return s.state }

// Ping checks that CONFIG_DB answers.
func (s *Switch) Ping(ctx context.Context) error {
	if err := s.config.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("%s: %w", ConfigDB, err)
	}
	return nil
}
