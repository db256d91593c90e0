package upgrade

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/seedf05e/caddy-upgrade/internal/protocol"
)

// The collectors live for the process: Caddy makes a new registry for each
// config load, and re-registering the same collectors there keeps counts
// across reloads (the way Caddy's reverse proxy metrics do it).
var upgradeMetrics struct {
	once     sync.Once
	requests *prometheus.CounterVec
	open     *prometheus.GaugeVec
	duration *prometheus.HistogramVec
	bytes    *prometheus.CounterVec
}

func registerMetrics(registry *prometheus.Registry) error {
	const ns, sub = "caddy", "upgrade"
	upgradeMetrics.once.Do(func() {
		upgradeMetrics.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "Requests that offered an upgrade, by protocol and final outcome.",
		}, []string{"protocol", "outcome"})
		upgradeMetrics.open = prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "tunnels_open",
			Help: "Tunnels open through upgrade handlers.",
		}, []string{"protocol"})
		upgradeMetrics.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "tunnel_duration_seconds",
			Help:    "How long tunnels stayed open.",
			Buckets: []float64{0.1, 1, 10, 60, 300, 1800, 3600, 4 * 3600, 24 * 3600},
		}, []string{"protocol"})
		upgradeMetrics.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "tunnel_bytes_total",
			Help: "Bytes carried by tunnels: upstream is client to backend, downstream backend to client.",
		}, []string{"protocol", "direction"})
	})
	if registry == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{upgradeMetrics.requests, upgradeMetrics.open, upgradeMetrics.duration, upgradeMetrics.bytes} {
		if err := registry.Register(c); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return err
		}
	}
	return nil
}

// countRequest records a request with an offer once, with its final outcome.
func countRequest(label string, out protocol.Outcome) {
	upgradeMetrics.requests.WithLabelValues(label, out.String()).Inc()
}

// tunnelMetrics are one tunnel's resolved collectors, looked up once so the
// copy loops only add.
type tunnelMetrics struct {
	open       prometheus.Gauge
	duration   prometheus.Observer
	upstream   prometheus.Counter
	downstream prometheus.Counter
}

func newTunnelMetrics(label string) *tunnelMetrics {
	return &tunnelMetrics{
		open:       upgradeMetrics.open.WithLabelValues(label),
		duration:   upgradeMetrics.duration.WithLabelValues(label),
		upstream:   upgradeMetrics.bytes.WithLabelValues(label, "upstream"),
		downstream: upgradeMetrics.bytes.WithLabelValues(label, "downstream"),
	}
}
