package redfish

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"time"
)

// session is one login. Only the token's hash is kept: the map lookup
// by hash gives nothing away about other tokens' bytes.
type session struct {
	id       string
	user     string
	created  time.Time
	lastUsed time.Time
}

func (s *Server) sessionPath(id string) string { return sessionsPath + "/" + id }

// credentialsOK compares in constant time (hashes, so the lengths leak
// nothing either).
func (s *Server) credentialsOK(user, pass string) bool {
	u := sha256.Sum256([]byte(user))
	p := sha256.Sum256([]byte(pass))
	return subtle.ConstantTimeCompare(u[:], s.userHash[:])&subtle.ConstantTimeCompare(p[:], s.passHash[:]) == 1
}

// authenticate accepts a live session token or HTTP Basic credentials.
func (s *Server) authenticate(r *http.Request) bool {
	if tok := r.Header.Get("X-Auth-Token"); tok != "" {
		h := sha256.Sum256([]byte(tok))
		s.mu.Lock()
		defer s.mu.Unlock()
		sess, ok := s.sessions[h]
		now := s.now()
		if !ok || now.Sub(sess.lastUsed) > s.cfg.SessionTimeout {
			delete(s.sessions, h)
			return false
		}
		sess.lastUsed = now
		return true
	}
	user, pass, ok := r.BasicAuth()
	if !ok {
		return false
	}
	if !s.credentialsOK(user, pass) {
		s.log.Warn("basic auth refused", "user", user, "remote", r.RemoteAddr)
		return false
	}
	return true
}

// expire drops idle sessions; called with mu held.
func (s *Server) expire(now time.Time) {
	for h, sess := range s.sessions {
		if now.Sub(sess.lastUsed) > s.cfg.SessionTimeout {
			delete(s.sessions, h)
		}
	}
}

func (s *Server) sessionDoc(sess *session) map[string]any {
	return map[string]any{
		"@odata.id":   s.sessionPath(sess.id),
		"@odata.type": "#Session.v1_3_0.Session",
		"Id":          sess.id,
		"Name":        "User Session",
		"UserName":    sess.user,
		"SessionType": "Redfish",
		"CreatedTime": sess.created.UTC().Format(time.RFC3339),
	}
}

// postSession logs in: 201 with the token in X-Auth-Token and the
// session's URI in Location.
func (s *Server) postSession(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readObject(w, r)
	if !ok {
		return
	}
	var errs []message
	creds := map[string]string{}
	for _, k := range []string{"UserName", "Password"} {
		raw, ok := body[k]
		if !ok {
			errs = append(errs, msg("PropertyMissing", fmt.Sprintf("The property %s is a required property and must be included in the request.", k),
				"Ensure that the property is in the request body and has a valid value and resubmit the request if the operation failed.", k).related("#/"+k))
			continue
		}
		var v string
		if err := json.Unmarshal(raw, &v); err != nil {
			shown := string(raw)
			if k == "Password" {
				shown = "(hidden)"
			}
			errs = append(errs, msg("PropertyValueTypeError", fmt.Sprintf("The value %s for the property %s is of a different type than the property can accept: want a string.", shown, k),
				"Correct the value for the property in the request body and resubmit the request if the operation failed.", shown, k).related("#/"+k))
			continue
		}
		creds[k] = v
	}
	if len(errs) > 0 {
		s.fail(w, http.StatusBadRequest, errs...)
		return
	}
	if !s.credentialsOK(creds["UserName"], creds["Password"]) {
		s.log.Warn("login refused", "user", creds["UserName"], "remote", r.RemoteAddr)
		w.Header().Set("WWW-Authenticate", `Basic realm="metal-lab BMC"`)
		s.fail(w, http.StatusUnauthorized, msg("NoValidSession", "Login refused: wrong user name or password.", "Log in with the BMC's credentials."))
		return
	}

	token, id := randomString(32), randomHex(8)
	now := s.now()
	sess := &session{id: id, user: creds["UserName"], created: now, lastUsed: now}
	s.mu.Lock()
	s.expire(now)
	if len(s.sessions) >= maxSessions {
		s.mu.Unlock()
		s.fail(w, http.StatusServiceUnavailable, msg("SessionLimitExceeded", fmt.Sprintf("The session establishment failed due to the number of simultaneous sessions (%d) exceeding the limit of the implementation.", maxSessions),
			"Reduce the number of other sessions before trying to establish the session or increase the limit of simultaneous sessions (if supported)."))
		return
	}
	s.sessions[sha256.Sum256([]byte(token))] = sess
	s.mu.Unlock()
	s.log.Info("login", "user", sess.user, "session", id, "remote", r.RemoteAddr)

	w.Header().Set("X-Auth-Token", token)
	w.Header().Set("Location", s.sessionPath(id))
	s.writeJSON(w, http.StatusCreated, s.sessionDoc(sess))
}

// findSession returns the session with id; called with mu held.
func (s *Server) findSession(id string) ([32]byte, *session) {
	s.expire(s.now())
	for h, sess := range s.sessions {
		if sess.id == id {
			return h, sess
		}
	}
	return [32]byte{}, nil
}

func (s *Server) sessionMissing(w http.ResponseWriter, id string) {
	s.fail(w, http.StatusNotFound, msg("ResourceMissingAtURI", fmt.Sprintf("The resource at the URI %s was not found: no such session.", s.sessionPath(id)),
		"Place a valid resource at the URI or correct the URI and resubmit the request.", s.sessionPath(id)))
}

func (s *Server) getSession(w http.ResponseWriter, _ *http.Request, id string) {
	s.mu.Lock()
	_, sess := s.findSession(id)
	var doc map[string]any
	if sess != nil {
		doc = s.sessionDoc(sess)
	}
	s.mu.Unlock()
	if doc == nil {
		s.sessionMissing(w, id)
		return
	}
	s.writeJSON(w, http.StatusOK, doc)
}

// deleteSession logs out.
func (s *Server) deleteSession(w http.ResponseWriter, r *http.Request, id string) {
	s.mu.Lock()
	h, sess := s.findSession(id)
	if sess != nil {
		delete(s.sessions, h)
	}
	s.mu.Unlock()
	if sess == nil {
		s.sessionMissing(w, id)
		return
	}
	s.log.Info("logout", "user", sess.user, "session", id, "remote", r.RemoteAddr)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) getSessions(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	s.expire(s.now())
	var ids []string
	for _, sess := range s.sessions {
		ids = append(ids, s.sessionPath(sess.id))
	}
	s.mu.Unlock()
	sort.Strings(ids)
	s.writeJSON(w, http.StatusOK, collection(sessionsPath, "#SessionCollection.SessionCollection", "Session Collection", ids...))
}

func (s *Server) getSessionService(w http.ResponseWriter, _ *http.Request) {
	s.writeJSON(w, http.StatusOK, map[string]any{
		"@odata.id":      sessionServicePath,
		"@odata.type":    "#SessionService.v1_1_8.SessionService",
		"Id":             "SessionService",
		"Name":           "Session Service",
		"ServiceEnabled": true,
		"SessionTimeout": int(s.cfg.SessionTimeout / time.Second),
		"Status":         okStatus(),
		"Sessions":       link(sessionsPath),
	})
}

// randomString returns n random bytes, base64url-encoded.
func randomString(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand since Go 1.24)
	return base64.RawURLEncoding.EncodeToString(b)
}

// randomHex returns n random bytes, hex-encoded.
func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
