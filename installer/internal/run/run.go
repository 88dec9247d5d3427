// Package run is the installer's flow: network, trust, registration,
// waiting, installation and the hand-over to the installed kernel, driven
// by the machine's desired document from central (docs/installer.md).
//
// The flow is one explicit sequence in Run; everything it does to the
// machine goes through Hardware, so a test drives a whole installation
// against a real gRPC stream with fakes of the machine.
package run

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/agents/agent"
	"github.com/metalfleet/metalfleet/installer/internal/config"
	"github.com/metalfleet/metalfleet/installer/internal/image"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Provisioning event types (helper-common.md; central's FSM reads them).
const (
	EventPreparing   = "Preparing"
	EventRegistering = "Registering"
	EventWaiting     = "Waiting"
	EventInstalling  = "Installing"
	EventBooting     = "Booting New Kernel"
	EventCrashed     = "Crashed"
)

// Config is one installer run.
type Config struct {
	Cmdline  Cmdline
	Hardware Hardware
	// HTTP talks to pixie; nil uses a client with a 30 s timeout.
	HTTP *http.Client
	// StateDir keeps the agent's credential; a tmpfs, the installer lives
	// in RAM (default /run/metal-installer).
	StateDir string
	Version  string
	// PhonehomeBinary is copied into the installed system ("" skips it).
	PhonehomeBinary string
	Log             *slog.Logger
	LogLevel        *slog.LevelVar
	Metrics         *agent.Metrics

	// Tunables; zero takes the default.
	LLDPWait         time.Duration // 5 s
	FlushTimeout     time.Duration // 10 s
	ProgressInterval time.Duration // 5 s
	RebootDelay      time.Duration // 10 s, to read the console
	MaxRefusals      int           // 10
	// ConnectTimeout: an installer that never reached central within it
	// reboots into PXE (10 min); it warns every ConnectWarn (15 s) before.
	ConnectTimeout time.Duration
	ConnectWarn    time.Duration
	MinBackoff     time.Duration // agent reconnect, 500 ms
	MaxBackoff     time.Duration // 30 s
	Now            func() time.Time
}

func (c *Config) defaults() {
	if c.HTTP == nil {
		c.HTTP = &http.Client{Timeout: 30 * time.Second}
	}
	if c.StateDir == "" {
		c.StateDir = "/run/metal-installer"
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.LLDPWait == 0 {
		c.LLDPWait = 5 * time.Second
	}
	if c.FlushTimeout == 0 {
		c.FlushTimeout = 10 * time.Second
	}
	if c.ProgressInterval == 0 {
		c.ProgressInterval = 5 * time.Second
	}
	if c.RebootDelay == 0 {
		c.RebootDelay = 10 * time.Second
	}
	if c.MaxRefusals == 0 {
		c.MaxRefusals = 10
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 10 * time.Minute
	}
	if c.ConnectWarn == 0 {
		c.ConnectWarn = 15 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = 500 * time.Millisecond
	}
}

// runner is the state of one run.
type runner struct {
	cfg   Config
	hw    Hardware
	log   *slog.Logger
	pixie pixie
	lease Lease
	mf    *agentv1.MachineFacts
	fleet *fleet
	// fleetErr reports the connection giving up.
	fleetErr chan error
	caPEM    []byte
	// inst and alloc are set once the installation began, for the wipe
	// after a checksum mismatch.
	inst  *Installed
	alloc *agentv1.MachineAllocation
}

// Run installs the machine. On the real machine it does not return: it
// kexecs into the installed system, or reboots into PXE after any failure
// (reported to central as "Crashed" first). It returns when ctx ends, or
// when the Hardware's Kexec or Reboot returned (fakes, --dry-run).
func Run(ctx context.Context, cfg Config) error {
	cfg.defaults()
	if cfg.Hardware == nil {
		return errors.New("run: no hardware")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := &runner{cfg: cfg, hw: cfg.Hardware, log: cfg.Log, fleetErr: make(chan error, 1),
		pixie: pixie{base: cfg.Cmdline.Pixie, client: cfg.HTTP}}
	err := r.run(ctx)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err == nil {
		return nil
	}
	return r.crash(ctx, err)
}

func (r *runner) run(ctx context.Context) error {
	start := r.cfg.Now()
	r.log.Info("metal-installer starting", "version", r.cfg.Version, "cmdline", r.cfg.Cmdline)

	lease, err := r.hw.NetworkUp(ctx)
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	r.lease = lease
	r.log.Info("network up", "interface", lease.Interface, "mac", lease.MAC.String(), "address", lease.Address, "router", lease.Router)

	mf, err := r.hw.Collect(ctx)
	if err != nil {
		return fmt.Errorf("collect facts: %w", err)
	}
	r.mf = mf
	identity := strings.ToLower(strings.TrimSpace(mf.GetUuid()))
	if identity == "" {
		return errors.New("collect facts: the machine has no DMI product UUID, which is its identity")
	}
	r.log.Info("machine", "uuid", identity, "vendor", mf.GetVendor(), "product", mf.GetProduct(), "cores", mf.GetCores(),
		"memory_mb", mf.GetMemoryBytes()>>20, "disks", diskNames(mf), "nics", nicNames(mf))

	if err := r.connect(ctx, identity); err != nil {
		return err
	}
	preparing := event(EventPreparing, fmt.Sprintf("installer %s up, %s on %s", r.cfg.Version, lease.Address, lease.Interface))
	preparing.Time = timestamppb.New(start)
	r.emit(nil, preparing)

	r.neighbours(ctx)
	facts := &agentv1.Facts{AgentVersion: r.cfg.Version, Machine: r.mf}
	if lease.Address.IsValid() {
		facts.Addresses = []string{lease.Address.Addr().String()}
	}
	r.emit(facts, event(EventRegistering, fmt.Sprintf("%d cores, %d MB memory, %d disks, %d NICs",
		mf.GetCores(), mf.GetMemoryBytes()>>20, len(mf.GetDisks()), len(mf.GetNics()))))

	doc, err := r.waitRegistered(ctx)
	if err != nil {
		return err
	}
	if doc.GetAllocation() == nil {
		if doc, err = r.wait(ctx, doc); err != nil {
			return err
		}
	} else {
		// A reinstall (or a reboot during an installation) comes back
		// with its allocation: wiping every disk now would destroy the
		// data disks a reinstall keeps; Apply wipes what it must.
		r.log.Info("registered with an allocation; installing at once", "allocation", doc.GetAllocation().GetId())
	}
	return r.install(ctx, doc)
}

// connect starts the connection to central with the CA pin and boot token.
func (r *runner) connect(ctx context.Context, identity string) error {
	cl := r.cfg.Cmdline
	base := agent.Config{
		Kind:       agentv1.Kind_KIND_INSTALLER,
		Identity:   identity,
		Centrals:   cl.Centrals,
		Log:        r.log.With("component", "agent"),
		LogLevel:   r.cfg.LogLevel,
		Metrics:    r.cfg.Metrics,
		MinBackoff: r.cfg.MinBackoff,
		MaxBackoff: r.cfg.MaxBackoff,
	}
	if cl.CA != "" {
		var caPEM []byte
		var tlsCfg *tls.Config
		var err error
		for attempt := 1; ; attempt++ {
			caPEM, tlsCfg, err = r.pixie.trust(ctx, cl.CA)
			// A foreign CA is final; pixie briefly away is not.
			if err == nil || errors.Is(err, errCAPin) || attempt >= 5 || ctx.Err() != nil {
				break
			}
			r.log.Warn("central CA not fetched yet", "err", err, "attempt", attempt)
			if !agent.Sleep(ctx, time.Duration(attempt)*4*r.cfg.MinBackoff) {
				return ctx.Err()
			}
		}
		if err != nil {
			return err
		}
		r.caPEM, base.TLS = caPEM, tlsCfg
		r.log.Info("central CA matches the pin", "sha256", cl.CA)
	} else {
		r.log.Warn("metal.plaintext: talking to central without TLS")
	}
	fresh := func(ctx context.Context) (string, error) {
		if r.pixie.base == "" {
			return "", errors.New("no metal.pixie to get a boot token from")
		}
		return r.pixie.bootToken(ctx, r.lease.MAC)
	}
	tok := cl.BootToken
	if tok == "" {
		r.log.Warn("no boot token on the command line; asking pixie for one")
		var err error
		for attempt := 1; ; attempt++ {
			if tok, err = fresh(ctx); err == nil {
				break
			}
			if attempt >= r.cfg.MaxRefusals || r.pixie.base == "" {
				return fmt.Errorf("boot token: %w", err)
			}
			r.log.Warn("no boot token yet", "err", err, "attempt", attempt)
			if !agent.Sleep(ctx, time.Duration(attempt)*time.Second) {
				return ctx.Err()
			}
		}
	}
	// The hello names the machine's NICs: a boot token is good only for
	// the MAC it was handed out to (docs/agent-protocol.md).
	hello := &agentv1.Facts{AgentVersion: r.cfg.Version, Machine: &agentv1.MachineFacts{Uuid: r.mf.GetUuid()}}
	for _, n := range r.mf.GetNics() {
		hello.Machine.Nics = append(hello.Machine.Nics, &agentv1.NICFact{Mac: n.GetMac(), Name: n.GetName()})
	}
	f, err := newFleet(base, hello, r.cfg.StateDir, tok, fresh, r.cfg.MaxRefusals, r.log)
	if err != nil {
		return err
	}
	r.fleet = f
	go func() {
		if err := f.run(ctx); err != nil {
			r.fail(err)
		}
	}()
	go r.watchConnect(ctx)
	return nil
}

// fail ends the flow with err (the first reason wins).
func (r *runner) fail(err error) {
	select {
	case r.fleetErr <- err:
	default:
	}
}

// watchConnect says on the console when central cannot be reached, and
// gives up after ConnectTimeout without a single connection: the boot
// configuration may be stale, and a fresh PXE boot brings a new one.
func (r *runner) watchConnect(ctx context.Context) {
	start := r.cfg.Now()
	t := time.NewTicker(r.cfg.ConnectWarn)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ok, phase := r.fleet.connected()
		if ok {
			return
		}
		waited := r.cfg.Now().Sub(start).Round(time.Second)
		r.log.Warn("central unreachable", "centrals", strings.Join(r.cfg.Cmdline.Centrals, ","), "phase", phase, "waited", waited)
		if waited >= r.cfg.ConnectTimeout {
			r.fail(fmt.Errorf("central unreachable at %s for %s", strings.Join(r.cfg.Cmdline.Centrals, ","), waited))
			return
		}
	}
}

func (r *runner) emit(facts *agentv1.Facts, e *agentv1.Event) {
	r.log.Info("event", "type", e.GetType(), "message", e.GetMessage())
	r.fleet.Emit(facts, e)
}

// neighbours adds what LLDP tells within a few seconds to the NIC facts.
func (r *runner) neighbours(ctx context.Context) {
	var ifaces []string
	for _, n := range r.mf.GetNics() {
		ifaces = append(ifaces, n.GetName())
	}
	if len(ifaces) == 0 {
		return
	}
	nb, err := r.hw.Neighbours(ctx, ifaces, r.cfg.LLDPWait)
	if err != nil {
		// The switch ports are nice to know, not needed to install.
		r.log.Warn("lldp", "err", err)
	}
	for _, n := range r.mf.GetNics() {
		if got := nb[n.GetName()]; len(got) > 0 {
			n.Neighbours = got
			r.log.Info("lldp neighbour", "nic", n.GetName(), "chassis", got[0].GetChassisId(), "port", got[0].GetPortId())
		}
	}
}

// waitRegistered waits until central registered the machine.
func (r *runner) waitRegistered(ctx context.Context) (*agentv1.MachineDocument, error) {
	r.log.Info("waiting for central to register the machine")
	for {
		d, err := r.fleet.next(ctx, r.fleetErr)
		if err != nil {
			return nil, fmt.Errorf("waiting for registration: %w", err)
		}
		if m := d.GetMachine(); m.GetMachineId() != "" {
			r.log.Info("registered", "machine_id", m.GetMachineId(), "revision", d.GetRevision())
			return m, nil
		}
	}
}

// wait wipes every disk and waits in the pool for an allocation, wiping
// again once per wipe_generation.
func (r *runner) wait(ctx context.Context, doc *agentv1.MachineDocument) (*agentv1.MachineDocument, error) {
	disks := allDisks(r.mf)
	if err := r.hw.Wipe(ctx, disks); err != nil {
		return nil, fmt.Errorf("wipe %v: %w", disks, err)
	}
	wiped := doc.GetWipeGeneration()
	r.emit(nil, event(EventWaiting, fmt.Sprintf("%d disks wiped, waiting for an allocation", len(disks))))
	for doc.GetAllocation() == nil {
		d, err := r.fleet.next(ctx, r.fleetErr)
		if err != nil {
			return nil, fmt.Errorf("waiting for an allocation: %w", err)
		}
		doc = d.GetMachine()
		if g := doc.GetWipeGeneration(); g > wiped {
			r.log.Info("wipe requested", "generation", g)
			if err := r.hw.Wipe(ctx, disks); err != nil {
				return nil, fmt.Errorf("wipe %v: %w", disks, err)
			}
			wiped = g
		}
	}
	return doc, nil
}

// install applies the allocation and hands over to the installed kernel.
func (r *runner) install(ctx context.Context, doc *agentv1.MachineDocument) error {
	a := doc.GetAllocation()
	r.alloc = a
	img := a.GetImage()
	if img.GetUrl() == "" || img.GetSha256() == "" {
		return fmt.Errorf("allocation %s: image without url or sha256", a.GetId())
	}
	r.emit(nil, event(EventInstalling, fmt.Sprintf("allocation %s: installing %s on %s", a.GetId(), imageName(img), a.GetHostname())))

	inst, err := r.hw.Apply(ctx, a.GetLayout(), a.GetReinstall())
	if err != nil {
		return fmt.Errorf("apply layout: %w", err)
	}
	r.inst = inst
	r.emit(nil, event(EventInstalling, "file systems created and mounted; streaming the image"))

	began := r.cfg.Now()
	var read int64
	p := newProgress(r.cfg.ProgressInterval, r.cfg.Now, func(msg string) { r.emit(nil, event(EventInstalling, msg)) })
	track := func(n, total int64) {
		read = n
		p.update(n, total)
	}
	err = errNoPixie
	if r.pixie.base != "" {
		err = r.hw.Stream(ctx, r.pixie.imageURL(img.GetUrl(), img.GetSha256()), img.GetSha256(), inst.Target, track)
	}
	if err != nil && read == 0 && !errors.Is(err, image.ErrChecksum) && ctx.Err() == nil {
		// Nothing written yet: the image server itself may still work.
		if !errors.Is(err, errNoPixie) {
			r.log.Warn("image from pixie's cache failed; fetching it directly", "err", err)
		}
		err = r.hw.Stream(ctx, img.GetUrl(), img.GetSha256(), inst.Target, track)
	}
	if err != nil {
		return fmt.Errorf("image %s: %w", imageName(img), err)
	}
	secs := r.cfg.Now().Sub(began).Seconds()
	r.emit(nil, event(EventInstalling, fmt.Sprintf("image written: %s MB in %.0f s", mb(read), secs)))

	tok, err := r.fleet.credential()
	if err != nil {
		return err
	}
	ph := config.Phonehome{MachineID: doc.GetMachineId(), Centrals: r.cfg.Cmdline.Centrals, CAPEM: r.caPEM, Token: tok,
		Binary: r.cfg.PhonehomeBinary, RelayPort: r.cfg.Cmdline.RelayPort}
	sys := config.System{Fstab: inst.Fstab, NIC: r.lease.Interface, MAC: r.lease.MAC.String()}
	for _, n := range r.mf.GetNics() {
		if n.GetName() != "" && n.GetName() != sys.NIC {
			sys.Uplinks = append(sys.Uplinks, n.GetName())
		}
	}
	if err := r.hw.WriteConfig(ctx, inst.Target, doc, ph, sys); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	spec, err := r.hw.PrepareBoot(ctx, inst)
	if err != nil {
		return fmt.Errorf("boot setup: %w", err)
	}
	if err := r.hw.LoadKernel(ctx, spec); err != nil {
		return err
	}
	r.emit(nil, event(EventBooting, "kexec "+strings.TrimPrefix(spec.Kernel, inst.Target)))
	r.flush()
	if err := inst.Unmount(ctx); err != nil {
		return fmt.Errorf("unmount: %w", err)
	}
	r.inst = nil
	r.log.Info("kexec into the installed kernel", "cmdline", spec.Cmdline)
	return r.hw.Kexec(ctx)
}

var errNoPixie = errors.New("no pixie")

// flush gives the last events a bounded chance to reach central and ends
// the connection: when it returns without a warning, central has stored
// them, so kexec or a reboot cannot lose them.
func (r *runner) flush() {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.FlushTimeout)
	defer cancel()
	if err := r.fleet.Close(ctx); err != nil {
		r.log.Warn("events not acknowledged by central before the deadline", "err", err)
	}
}

// crash reports a fatal error and reboots into PXE.
func (r *runner) crash(ctx context.Context, cause error) error {
	r.log.Error("installation failed; rebooting into PXE", "err", cause)
	checksum := errors.Is(cause, image.ErrChecksum)
	if r.fleet != nil {
		msg := cause.Error()
		if checksum {
			msg = fmt.Sprintf("image checksum mismatch: %s from %s; wiping disks and rebooting", imageName(r.alloc.GetImage()), r.alloc.GetImage().GetUrl())
		}
		r.emit(nil, event(EventCrashed, truncate(msg, 2000)))
		r.flush()
	}
	if checksum {
		// Half an image must not boot, nor look installed to anyone.
		disks := allDisks(r.mf)
		if r.inst != nil {
			if err := r.inst.Unmount(ctx); err != nil {
				r.log.Warn("unmount before wipe", "err", err)
			}
			if len(r.inst.Devices) > 0 {
				disks = r.inst.Devices
			}
		}
		if err := r.hw.Wipe(ctx, disks); err != nil {
			r.log.Error("wipe after checksum mismatch", "err", err)
		}
	}
	if !agent.Sleep(ctx, r.cfg.RebootDelay) {
		return errors.Join(cause, ctx.Err())
	}
	if err := r.hw.Reboot(ctx); err != nil {
		return errors.Join(cause, fmt.Errorf("reboot: %w", err))
	}
	return cause
}

func allDisks(mf *agentv1.MachineFacts) []string {
	var out []string
	for _, d := range mf.GetDisks() {
		out = append(out, "/dev/"+d.GetName())
	}
	return out
}

func diskNames(mf *agentv1.MachineFacts) string {
	var s []string
	for _, d := range mf.GetDisks() {
		s = append(s, fmt.Sprintf("%s(%dMB)", d.GetName(), d.GetSizeBytes()/1_000_000))
	}
	return strings.Join(s, ",")
}

func nicNames(mf *agentv1.MachineFacts) string {
	var s []string
	for _, n := range mf.GetNics() {
		s = append(s, n.GetName()+"="+n.GetMac())
	}
	return strings.Join(s, ",")
}

func imageName(img *agentv1.ImageRef) string {
	if img.GetId() != "" {
		return img.GetId()
	}
	return img.GetOs() + "-" + img.GetVersion()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
