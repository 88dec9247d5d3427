package redfish

import (
	"encoding/json"
	"net/http"
)

// The DMTF Base message registry version our MessageIds come from.
const registry = "Base.1.8."

// message is one entry of @Message.ExtendedInfo.
type message struct {
	ODataType         string   `json:"@odata.type"`
	MessageID         string   `json:"MessageId"`
	Message           string   `json:"Message"`
	MessageArgs       []string `json:"MessageArgs"`
	RelatedProperties []string `json:"RelatedProperties,omitempty"`
	Severity          string   `json:"Severity"`
	MessageSeverity   string   `json:"MessageSeverity"`
	Resolution        string   `json:"Resolution"`
}

// msg builds a message; id is a Base registry message name, text names
// the property or parameter and why it was refused.
func msg(id, text, resolution string, args ...string) message {
	if args == nil {
		args = []string{}
	}
	return message{ODataType: "#Message.v1_1_1.Message", MessageID: registry + id, Message: text,
		MessageArgs: args, Severity: "Warning", MessageSeverity: "Warning", Resolution: resolution}
}

// related sets the JSON pointers of the properties a message is about.
func (m message) related(props ...string) message {
	m.RelatedProperties = props
	return m
}

// fail writes a Redfish error response: a general error whose extended
// info says what went wrong.
func (s *Server) fail(w http.ResponseWriter, code int, msgs ...message) {
	top := msgs[0]
	if len(msgs) > 1 {
		top = msg("GeneralError", "A general error has occurred. See ExtendedInfo for more information.", "See ExtendedInfo for more information.")
	}
	s.writeJSON(w, code, map[string]any{"error": map[string]any{
		"code":                  top.MessageID,
		"message":               top.Message,
		"@Message.ExtendedInfo": msgs,
	}})
}

func (s *Server) writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		s.log.Error("encode response", "err", err)
		code, b = http.StatusInternalServerError, []byte(`{"error":{"code":"`+registry+`InternalError","message":"encode response"}}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("OData-Version", "4.0")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

func internalError(err error) message {
	return msg("InternalError", "The request failed due to an internal service error: "+err.Error()+".",
		"Resubmit the request. If the problem persists, look at the BMC's log.")
}
