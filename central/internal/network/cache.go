package network

import (
	"sync"
	"time"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// The next-free IP path reads only what never changes in a network (its
// type, project and prefixes: Update changes name, description and labels
// only), so it keeps networks it has read in memory for a while instead of
// reading the row on every call. A network deleted and created again under
// the same id is a different row: the shared statement takes nothing unless
// the row with the cached id and created_at still exists (guard in
// allocateBatchSQL), and a call it does not serve forgets the entry and
// starts over on a fresh read. So a stale entry, such as one of a network
// another replica deleted, can cost a retry, never a wrong answer; changes
// made through this process's Networks drop their entry at once.
const (
	cacheTTL  = 30 * time.Second
	cacheSize = 4096
)

type cacheEntry struct {
	n       *apiv1.Network
	expires time.Time
}

// cache is one Networks' cache of networks by id.
type cache struct {
	mu sync.RWMutex
	m  map[string]cacheEntry
}

func newCache() *cache { return &cache{m: map[string]cacheEntry{}} }

func (c *cache) get(id string) (*apiv1.Network, bool) {
	c.mu.RLock()
	e, ok := c.m[id]
	c.mu.RUnlock()
	if !ok || time.Now().After(e.expires) {
		return nil, false
	}
	return e.n, true
}

func (c *cache) remember(n *apiv1.Network) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= cacheSize {
		now := time.Now()
		for k, e := range c.m {
			if now.After(e.expires) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= cacheSize {
			clear(c.m)
		}
	}
	c.m[n.GetId()] = cacheEntry{n: n, expires: time.Now().Add(cacheTTL)}
}

func (c *cache) forget(id string) {
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}
