package web

import (
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// Every boot script of the installer and every /v1/boot-token carries a
// fresh one-time boot token that central mints. The gate decides who gets
// one (docs/agent-protocol.md, "Boot tokens and the threat model"):
//   - where pixie serves DHCP for the request's address family, only the
//     address pixie leased to the MAC: a stranger on the PXE network cannot
//     ask for another machine's token by naming its MAC;
//   - per MAC at most TokenBurst at once, one more every TokenEvery: a
//     loop cannot mint without bound (central caps the unused ones of a
//     partition besides).

// Defaults of the gate: a boot asks once for its script and the installer
// a few times when central refuses a token; a machine boots far less often.
const (
	DefaultTokenBurst = 8
	DefaultTokenEvery = 15 * time.Second
	// maxBuckets bounds the gate's memory; idle (full) buckets are dropped
	// first, and when every bucket is busy new MACs wait.
	maxBuckets = 16384
)

type bucket struct {
	tokens float64
	at     time.Time
}

// limiter is a token bucket per MAC.
type limiter struct {
	burst float64
	every time.Duration
	now   func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

func newLimiter(burst int, every time.Duration, now func() time.Time) *limiter {
	if burst <= 0 {
		burst = DefaultTokenBurst
	}
	if every <= 0 {
		every = DefaultTokenEvery
	}
	if now == nil {
		now = time.Now
	}
	return &limiter{burst: float64(burst), every: every, now: now, buckets: map[string]*bucket{}}
}

// allow takes one token of mac's bucket; otherwise it says how long until
// the next one.
func (l *limiter) allow(mac string) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b, ok := l.buckets[mac]
	if ok {
		b.tokens = min(l.burst, b.tokens+float64(now.Sub(b.at))/float64(l.every))
		b.at = now
	} else {
		if len(l.buckets) >= maxBuckets {
			l.dropIdle(now)
		}
		if len(l.buckets) >= maxBuckets {
			return false, l.every
		}
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[mac] = b
	}
	if b.tokens < 1 {
		return false, time.Duration((1 - b.tokens) * float64(l.every))
	}
	b.tokens--
	return true, 0
}

// dropIdle forgets buckets that have refilled: they hold nothing a new
// bucket would not.
func (l *limiter) dropIdle(now time.Time) {
	for mac, b := range l.buckets {
		if b.tokens+float64(now.Sub(b.at))/float64(l.every) >= l.burst {
			delete(l.buckets, mac)
		}
	}
}

// tokenGate reports whether the request may receive a boot token for mac;
// if not, it has answered it.
func (s *Server) tokenGate(w http.ResponseWriter, r *http.Request, mac string) bool {
	v6 := remoteIsV6(r)
	if s.cfg.ServesDHCP(v6) {
		leased := s.cfg.Address(mac, v6)
		from, err := netip.ParseAddrPort(r.RemoteAddr)
		if leased == "" || err != nil || from.Addr().Unmap().WithZone("").String() != leased {
			s.cfg.Log.Warn("boot token refused: the request does not come from the MAC's lease", "mac", mac, "from", r.RemoteAddr, "leased", leased)
			http.Error(w, "a boot token for "+mac+" goes only to the address this pixie leased to it", http.StatusForbidden)
			return false
		}
	}
	if ok, wait := s.limiter.allow(mac); !ok {
		s.cfg.Log.Warn("boot token refused: too many for this MAC", "mac", mac, "from", r.RemoteAddr, "retry_in", wait.Round(time.Second))
		w.Header().Set("Retry-After", strconv.Itoa(int(wait.Seconds())+1))
		http.Error(w, "too many boot tokens for "+mac+"; try again later", http.StatusTooManyRequests)
		return false
	}
	return true
}
