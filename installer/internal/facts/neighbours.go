package facts

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Neighbours listens for LLDP frames on ifaces for up to wait and returns
// what each interface learned. It returns early once every interface has
// heard at least one neighbour: a server NIC faces one switch port, and
// switches send every 30 s, so waiting out the full time would only delay
// the registration. Interfaces that cannot be opened are reported in the
// error (joined); the map still holds what the others learned.
//
// The sockets are opened before Neighbours returns control to any other
// goroutine, in the caller's network namespace.
func Neighbours(ctx context.Context, ifaces []string, wait time.Duration) (map[string][]*agentv1.LLDPNeighbour, error) {
	out := make(map[string][]*agentv1.LLDPNeighbour, len(ifaces))
	var errs []error
	type listener struct {
		name string
		conn *packet.Conn
	}
	var ls []listener
	for _, name := range ifaces {
		c, err := listenLLDP(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ls = append(ls, listener{name, c})
	}
	if len(ls) == 0 {
		return out, errors.Join(errs...)
	}

	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var (
		mu      sync.Mutex
		heard   = map[string]map[string]*agentv1.LLDPNeighbour{}
		pending = len(ls)
		wg      sync.WaitGroup
	)
	for _, l := range ls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 9216)
			counted := false
			for {
				n, _, err := l.conn.ReadFrom(buf)
				if err != nil {
					// The deadline set on cancel ends the read; anything
					// else on a socket that worked is the interface going
					// away, which leaves what was learned.
					return
				}
				f, err := ParseLLDPFrame(buf[:n])
				if err != nil {
					continue
				}
				key := f.Neighbour.ChassisId + "\x00" + f.Neighbour.PortId
				mu.Lock()
				m := heard[l.name]
				if m == nil {
					m = map[string]*agentv1.LLDPNeighbour{}
					heard[l.name] = m
				}
				if f.TTL == 0 {
					delete(m, key)
				} else {
					m[key] = f.Neighbour
				}
				if len(m) > 0 && !counted {
					counted = true
					pending--
					if pending == 0 {
						cancel()
					}
				}
				mu.Unlock()
			}
		}()
	}
	<-ctx.Done()
	for _, l := range ls {
		_ = l.conn.SetReadDeadline(time.Unix(1, 0))
	}
	wg.Wait()
	if err := parent.Err(); err != nil {
		errs = append(errs, err)
	}
	for _, l := range ls {
		_ = l.conn.Close()
		var ns []*agentv1.LLDPNeighbour
		for _, n := range heard[l.name] {
			ns = append(ns, n)
		}
		sortNeighbours(ns)
		out[l.name] = ns
	}
	return out, errors.Join(errs...)
}

func sortNeighbours(ns []*agentv1.LLDPNeighbour) {
	sort.Slice(ns, func(i, j int) bool {
		if ns[i].ChassisId != ns[j].ChassisId {
			return ns[i].ChassisId < ns[j].ChassisId
		}
		return ns[i].PortId < ns[j].PortId
	})
}

// listenLLDP opens a raw packet socket for the LLDP ethertype and joins
// the LLDP group addresses: a real NIC's multicast filter drops them
// otherwise.
func listenLLDP(name string) (*packet.Conn, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("lldp on %s: %w", name, err)
	}
	c, err := packet.Listen(ifi, packet.Raw, lldpEtherType, nil)
	if err != nil {
		return nil, fmt.Errorf("lldp on %s: %w", name, err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("lldp on %s: %w", name, err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for _, last := range []byte{0x0e, 0x03, 0x00} {
			mreq := &unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_MULTICAST, Alen: 6}
			copy(mreq.Address[:], []byte{0x01, 0x80, 0xc2, 0, 0, last})
			if e := unix.SetsockoptPacketMreq(int(fd), unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, mreq); e != nil {
				serr = e
			}
		}
	}); err != nil {
		serr = err
	}
	if serr != nil {
		_ = c.Close()
		return nil, fmt.Errorf("lldp on %s: join the LLDP group: %w", name, serr)
	}
	return c, nil
}
