package breaker

// NewManualSync returns a Registry whose shared state moves only when the
// test calls Sync: no refresher runs, so the test decides the order of
// every publication and read.
func NewManualSync(cfg Config) (*Registry, error) { return newRegistry(cfg, false) }
