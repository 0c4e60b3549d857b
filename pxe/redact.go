package pxe

import "regexp"

// tokenParam finds the config token in a config URL wherever it is written:
// a kernel command line, a kernel log line, a URL. Tokens are base64url.
var tokenParam = regexp.MustCompile(`([?&;]t=)[A-Za-z0-9_%.~-]+`)

// Redacted replaces a config token's value in shown text.
const Redacted = "REDACTED"

// RedactTokens returns s with every config token value (the t= query
// parameter of a config URL) replaced by REDACTED, so text that may quote
// a kernel command line can be stored, logged and shown.
func RedactTokens(s string) string {
	return tokenParam.ReplaceAllString(s, "${1}"+Redacted)
}
