package main

// The system under test: Caddy (with the upgrade module) in front of the
// echo backend, each in its own process, and Caddy's admin API.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/seedf05e/caddy-upgrade/bench/proc"
	"github.com/seedf05e/caddy-upgrade/bench/tlscert"
)

// clientTLS is what every client of a TLS soak dials Caddy's site with:
// TLS 1.3, the run's certificate pinned. Nil in a plain soak.
var clientTLS *tls.Config

//go:embed Caddyfile.tmpl
var caddyfileTmpl string

var caddyfile = template.Must(template.New("Caddyfile").Parse(caddyfileTmpl))

// siteConfig is what a scenario varies in the Caddyfile.
type siteConfig struct {
	// Generation is echoed by GET /generation and sent to the backend as
	// X-Soak-Generation: bumping it makes a changed config.
	Generation  int
	CloseDelay  time.Duration // reverse_proxy stream_close_delay
	MaxConns    int           // upgrade max_connections; 0: none
	IdleTimeout time.Duration // upgrade idle_timeout
}

// serverTimeouts are the `servers { timeouts { ... } }` the soak runs
// with; README's Reliability section recommends them.
type serverTimeouts struct {
	ReadHeader time.Duration
	Idle       time.Duration
}

// env holds the running processes and how to reach them.
type env struct {
	cfg         *config
	caddyBin    string
	echoBin     string
	work        string
	listen      string // Caddy's site, host:port
	backendAddr string
	adminAddr   string
	timeouts    serverTimeouts
	caddy       *proc.Proc
	backend     *proc.Proc
	site        siteConfig // the config loaded last
	// cert is the certificate Caddy's site presents; nil without TLS.
	cert *tlscert.Cert
	// admin (the admin API) and web (plain requests to the site) have no
	// keep-alive: a pooled connection would count in Caddy's fds and
	// goroutines and blur the baseline checks.
	admin, web *http.Client
}

func newEnv(cfg *config) (*env, error) {
	work, err := os.MkdirTemp("", "soak-")
	if err != nil {
		return nil, err
	}
	e := &env{
		cfg:         cfg,
		caddyBin:    cfg.caddy,
		echoBin:     cfg.echo,
		work:        work,
		listen:      fmt.Sprintf("127.0.0.1:%d", cfg.basePort),
		backendAddr: fmt.Sprintf("127.0.0.1:%d", cfg.basePort+1),
		adminAddr:   fmt.Sprintf("127.0.0.1:%d", cfg.basePort+2),
		timeouts:    serverTimeouts{ReadHeader: cfg.readHeader, Idle: 2 * time.Minute},
		admin: &http.Client{
			Timeout:   30 * time.Second,
			Transport: &http.Transport{DisableKeepAlives: true},
		},
	}
	for _, addr := range []string{e.listen, e.backendAddr, e.adminAddr} {
		if err := proc.PortFree(addr); err != nil {
			return nil, err
		}
	}
	if cfg.tls {
		if e.cert, err = tlscert.Write(work); err != nil {
			return nil, fmt.Errorf("certificate: %v", err)
		}
		clientTLS = e.cert.ClientConfig()
	}
	e.web = &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: clientTLS},
	}
	return e, nil
}

func (e *env) wsURL() string {
	if e.cert != nil {
		return "wss://" + e.listen + "/ws"
	}
	return "ws://" + e.listen + "/ws"
}

func (e *env) siteURL(path string) string {
	if e.cert != nil {
		return "https://" + e.listen + path
	}
	return "http://" + e.listen + path
}

// dialSite opens a connection to Caddy's site as a client does before its
// first request: TCP, then in a TLS soak the TLS handshake.
func (e *env) dialSite() (net.Conn, error) {
	d := &net.Dialer{Timeout: 10 * time.Second}
	if e.cert == nil {
		return d.Dial("tcp", e.listen)
	}
	return tls.DialWithDialer(d, "tcp", e.listen, clientTLS)
}

// render produces the Caddyfile for site.
func (e *env) render(site siteConfig) ([]byte, error) {
	var buf bytes.Buffer
	err := caddyfile.Execute(&buf, map[string]any{
		"Admin":    e.adminAddr,
		"Listen":   e.listen,
		"Backend":  e.backendAddr,
		"Timeouts": e.timeouts,
		"Site":     site,
		"TLS":      e.cert,
	})
	return buf.Bytes(), err
}

// startBackend starts the echo backend and waits until it listens.
func (e *env) startBackend() error {
	p, err := proc.Start("echo", filepath.Join(e.work, "echo.log"), proc.Options{Append: true}, e.echoBin, "-listen", e.backendAddr)
	if err != nil {
		return err
	}
	e.backend = p
	return proc.WaitListening(p, e.backendAddr, 10*time.Second)
}

// startCaddy writes the first config, starts Caddy on it and waits for
// both its site and its admin API.
func (e *env) startCaddy(site siteConfig) error {
	conf, err := e.render(site)
	if err != nil {
		return err
	}
	path := filepath.Join(e.work, "Caddyfile")
	if err := os.WriteFile(path, conf, 0o644); err != nil {
		return err
	}
	dirs := []string{"HOME=" + e.work, "XDG_CONFIG_HOME=" + e.work, "XDG_DATA_HOME=" + e.work}
	p, err := proc.Start("caddy", filepath.Join(e.work, "caddy.log"), proc.Options{Append: true, Env: dirs},
		e.caddyBin, "run", "--adapter", "caddyfile", "--config", path)
	if err != nil {
		return err
	}
	e.caddy = p
	e.site = site
	if err := proc.WaitListening(p, e.listen, 20*time.Second); err != nil {
		return fmt.Errorf("%v\n%s", err, e.caddyLogTail())
	}
	return proc.WaitListening(p, e.adminAddr, 5*time.Second)
}

func (e *env) caddyLogTail() string {
	b, _ := os.ReadFile(filepath.Join(e.work, "caddy.log"))
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// load replaces Caddy's config through POST /load. Caddy skips a config
// identical to the running one unless told to revalidate; force makes it
// reload anyway, so that an identical config still swaps every handler
// instance (and runs the old ones' cleanup, which is what closes tunnels).
func (e *env) load(ctx context.Context, site siteConfig, force bool) error {
	conf, err := e.render(site)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+e.adminAddr+"/load", bytes.NewReader(conf))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	if force {
		req.Header.Set("Cache-Control", "must-revalidate")
	}
	res, err := e.admin.Do(req)
	if err != nil {
		return fmt.Errorf("POST /load: %v", err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /load: %s: %s", res.Status, bytes.TrimSpace(body))
	}
	e.site = site
	return nil
}

// loadScenario loads a scenario's config and waits out the reload before
// the scenario's clients start: while Caddy closes the old config's
// listening socket, connections made to it are reset or dropped
// unanswered (Caddy's reload race, soak/repro/reload-eof.sh), which is not
// what the scenarios test. Scenarios 1 and 2 reload under their clients on
// purpose, and those clients retry.
func (e *env) loadScenario(ctx context.Context, site siteConfig) error {
	if err := e.load(ctx, site, false); err != nil {
		return err
	}
	time.Sleep(time.Second)
	_, err := e.checkGeneration(ctx)
	return err
}

// adminGet fetches an admin API path.
func (e *env) adminGet(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+e.adminAddr+path, nil)
	if err != nil {
		return nil, err
	}
	res, err := e.admin.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", path, res.Status)
	}
	return body, nil
}

// goroutines reads the total from the first line of Caddy's goroutine
// profile: "goroutine profile: total N".
func (e *env) goroutines(ctx context.Context) (int, error) {
	body, err := e.adminGet(ctx, "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return 0, err
	}
	line, _, _ := bytes.Cut(body, []byte("\n"))
	rest, ok := strings.CutPrefix(string(line), "goroutine profile: total ")
	if !ok {
		return 0, fmt.Errorf("goroutine profile starts with %q", line)
	}
	return strconv.Atoi(strings.TrimSpace(rest))
}

// metricSum adds up every sample of a metric family in Caddy's /metrics
// (all label sets), e.g. caddy_upgrade_tunnels_open over protocols.
func (e *env) metricSum(ctx context.Context, name string) (float64, error) {
	body, err := e.adminGet(ctx, "/metrics")
	if err != nil {
		return 0, err
	}
	return sumMetric(body, name)
}

func sumMetric(exposition []byte, name string) (float64, error) {
	var sum float64
	found := false
	sc := bufio.NewScanner(bytes.NewReader(exposition))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue // another family sharing the prefix, or a comment
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %q: %v", name, line, err)
		}
		sum += v
		found = true
	}
	if !found {
		// The gauge vector shows no sample before its first tunnel.
		return 0, nil
	}
	return sum, sc.Err()
}

// tunnelsOpen is the module's gauge of open tunnels, over every handler
// instance and protocol.
func (e *env) tunnelsOpen(ctx context.Context) (float64, error) {
	return e.metricSum(ctx, "caddy_upgrade_tunnels_open")
}

// getText does a plain GET on Caddy's site.
func (e *env) getText(ctx context.Context, path string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.siteURL(path), nil)
	if err != nil {
		return "", err
	}
	res, err := e.web.Do(req)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		return "", &statusError{status: res.StatusCode, header: res.Header}
	}
	return string(body), err
}

// checkGeneration confirms that the config Caddy serves is the one loaded
// last: a reload that answered 200 but did not take would pass unseen.
//
// A request on a fresh connection during a reload can fail with no answer
// (EOF, reset, refused): Caddy's reload race, which soak/repro/reload-eof.sh
// reproduces without the module. The check retries and counts those.
func (e *env) checkGeneration(ctx context.Context) (dropped int, err error) {
	for {
		got, err := e.getText(ctx, "/generation")
		var status *statusError
		if err != nil && !errors.As(err, &status) && dropped < 3 {
			dropped++
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if err != nil {
			return dropped, err
		}
		if want := strconv.Itoa(e.site.Generation); got != want {
			return dropped, fmt.Errorf("GET /generation = %q after loading generation %s", got, want)
		}
		return dropped, nil
	}
}
