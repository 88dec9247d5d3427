package fleet

import (
	"regexp"
	"strings"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// KindName is the short name of a kind as stored and shown: "switch".
func KindName(k agentv1.Kind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "KIND_"))
}

// ParseKind reads a short kind name; false for unknown or unspecified.
func ParseKind(s string) (agentv1.Kind, bool) {
	v, ok := agentv1.Kind_value["KIND_"+strings.ToUpper(s)]
	if !ok || v == 0 {
		return 0, false
	}
	return agentv1.Kind(v), true
}

// KnownKind reports whether k is a kind this central serves.
func KnownKind(k agentv1.Kind) bool {
	_, ok := agentv1.Kind_name[int32(k)]
	return ok && k != agentv1.Kind_KIND_UNSPECIFIED
}

var identityRE = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// ValidIdentity reports whether s may name an agent.
func ValidIdentity(s string) bool { return identityRE.MatchString(s) }
