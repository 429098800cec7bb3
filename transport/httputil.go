package transport

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// writeJSON answers with status and v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"detail":"Internal error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// Detail is the body of every HTTP error: {"detail": "..."}.
type Detail struct {
	Detail string `json:"detail"`
}

func writeDetail(w http.ResponseWriter, status int, detail string) {
	writeJSON(w, status, Detail{Detail: detail})
}

// quoteShort quotes a client-supplied value for an error message, cut to a sane length.
func quoteShort(s string) string {
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return strconv.Quote(s)
}
