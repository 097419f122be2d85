// The pod sandbox ("pause") program of the local real node: a static binary
// that waits for SIGTERM or SIGINT and reaps the children it inherits.
module azaion.local/hack/pause

go 1.24.0
