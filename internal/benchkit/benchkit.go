// Package benchkit holds what the Pipeline's go test benchmarks and the
// wharf bench command share: the benchmark events, the tables, the
// raw-SQL baselines wharf is measured against, a fast preload and the
// arithmetic of the reports. Both sides measure the same thing, so their
// figures can be compared.
package benchkit

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wharfhq/wharf"
)

// Source and Type name the benchmark events; Handler is the name of their
// handler (the idempotency consumer), as the Pipeline derives it.
const (
	Source  = "bench"
	Type    = "bench.event"
	Handler = Source + "/" + Type
)

// Secret signs and verifies the benchmark's Standard Webhooks requests.
var Secret = "whsec_" + base64.StdEncoding.EncodeToString([]byte("wharf-bench-secret-0123456789abc"))

// Body is a 1 KB Standard Webhooks JSON body of type Type.
var Body = func() []byte {
	b := []byte(`{"type":"bench.event","timestamp":"2024-05-01T12:00:00Z","data":{"object":{"id":"ord_1NG8Du2eZvKYlo2C","customer":"cus_9s6XKzkNRiz8i3","note":"`)
	for len(b) < 1024-4 {
		b = append(b, 'x')
	}
	return append(b, `"}}}`...)
}()

// storedHeaders is what the HTTP ingest stores with an event (the kept
// headers of a signed request from Go's client), as JSON, for preloaded
// events.
var storedHeaders = func() []byte {
	h := wharf.SignStandardWebhooks(Secret, "msg_preloaded", time.Now(), Body)
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", "Go-http-client/1.1")
	h.Set("Accept-Encoding", "gzip")
	h.Set("Content-Length", "1024")
	b, err := json.Marshal(h)
	if err != nil {
		panic(err) // an http.Header always marshals
	}
	return b
}()

// Sign returns the headers of a request for Body with event id id, signed
// with Secret now, as a provider sends it.
func Sign(id string) http.Header {
	h := wharf.SignStandardWebhooks(Secret, id, time.Now(), Body)
	h.Set("Content-Type", "application/json")
	return h
}

// Parallel runs fn(i) for i in [0, n) on workers goroutines and returns
// the elapsed time and the first error; a worker stops at its first error.
func Parallel(workers, n int, fn func(i int) error) (time.Duration, error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	return elapsed, <-errs
}

// Millis returns d in milliseconds, to the microsecond.
func Millis(d time.Duration) float64 {
	return float64(d.Microseconds()) / 1000
}

// Percentile returns the p-quantile (0..1) of sorted (nearest rank below),
// in milliseconds; 0 for none.
func Percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return Millis(sorted[int(p*float64(len(sorted)-1))])
}

// Latencies collects durations from many goroutines.
type Latencies struct {
	mu sync.Mutex
	ds []time.Duration
}

// Add records d.
func (l *Latencies) Add(d time.Duration) {
	l.mu.Lock()
	l.ds = append(l.ds, d)
	l.mu.Unlock()
}

// Sorted returns a sorted copy of what was recorded.
func (l *Latencies) Sorted() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := slices.Clone(l.ds)
	slices.Sort(s)
	return s
}
