//go:build linux

package fasttimeout

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// nginxOptions shapes the generated configuration.
type nginxOptions struct {
	upstream    string        // host:port of the application
	readTimeout time.Duration // proxy_read_timeout; 0 leaves nginx's 60 s
	keepalive   int           // idle upstream connections kept per worker; 0: none, HTTP/1.0 upstream
}

// nginxProc is a running nginx in front of an upstream, on 127.0.0.1.
type nginxProc struct {
	addr    string // host:port nginx listens on
	dir     string // its prefix: configuration, logs, pid, temporary files
	errPath string
}

// errorLog returns nginx's error log so far.
func (n *nginxProc) errorLog(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(n.errPath)
	if err != nil {
		t.Fatalf("reading nginx's error log: %v", err)
	}
	return string(b)
}

// waitLog waits until nginx's error log matches re.
func waitLog(t testing.TB, n *nginxProc, re string) {
	t.Helper()
	rx := regexp.MustCompile(re)
	matches := func() bool {
		b, err := os.ReadFile(n.errPath)
		return err == nil && rx.Match(b)
	}
	if !assert.Eventually(t, matches, hangupWait, 10*time.Millisecond) {
		t.Fatalf("nginx's error log has no %q:\n%s", re, n.errorLog(t))
	}
}

// nginxBinary finds nginx; without it the test is skipped, or fails when
// CI is set (CI installs nginx-light, so a missing nginx there is a bug).
func nginxBinary(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("nginx")
	if err != nil {
		// Debian installs it in /usr/sbin, not always in a user's PATH.
		if _, serr := os.Stat("/usr/sbin/nginx"); serr == nil {
			return "/usr/sbin/nginx"
		}
		msg := "nginx not found: these tests run a real nginx in front of the server; install it (Debian: apt-get install -y nginx-light)"
		if os.Getenv("CI") != "" && os.Getenv("CI") != "false" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return path
}

// startNginx starts nginx with a configuration generated in t.TempDir(),
// waits until it accepts connections, and stops it at the test's cleanup.
// A port taken between choosing and binding it is retried.
func startNginx(t testing.TB, opts nginxOptions) *nginxProc {
	t.Helper()
	return startNginxOn(t, opts, freePort)
}

// startNginxOn is startNginx with the ports to try chosen by port.
func startNginxOn(t testing.TB, opts nginxOptions, port func() (int, error)) *nginxProc {
	t.Helper()
	bin := nginxBinary(t)
	var lastErr error
	for attempt := range 3 {
		n, err := tryStartNginx(t, bin, opts, attempt, port)
		if err == nil {
			return n
		}
		lastErr = err
	}
	t.Fatalf("nginx did not start: %v", lastErr)
	return nil
}

func tryStartNginx(t testing.TB, bin string, opts nginxOptions, attempt int, choosePort func() (int, error)) (*nginxProc, error) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "nginx"+strconv.Itoa(attempt))
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return nil, err
	}
	port, err := choosePort()
	if err != nil {
		return nil, err
	}
	n := &nginxProc{
		addr:    net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		dir:     dir,
		errPath: filepath.Join(dir, "error.log"),
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(nginxConfig(n, opts)), 0o644); err != nil {
		return nil, err
	}
	// -e: errors before the configuration is read go to the same log,
	// not to /var/log/nginx.
	cmd := exec.Command(bin, "-p", dir+"/", "-c", conf, "-e", n.errPath)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// Killed with the test process, whose cleanups do not run when it
	// dies (go test's timeout panics): nginx would run on, holding its
	// port. The signal comes when the thread that started nginx ends,
	// which only a goroutine that locks its thread and exits does; these
	// tests lock none.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		// SIGQUIT: graceful stop; SIGKILL if it takes too long.
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	// nginx writes its pid file once it has bound its listening socket.
	// Until then a connection to the port may reach another process that
	// took the port meanwhile, while nginx retries its bind() for 2.5 s
	// and exits.
	pidPath := filepath.Join(dir, "nginx.pid")
	listening := func() bool {
		b, err := os.ReadFile(pidPath)
		if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(cmd.Process.Pid) {
			return false
		}
		c, err := net.DialTimeout("tcp", n.addr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if listening() {
			t.Cleanup(stop)
			return n, nil
		}
		select {
		case werr := <-exited:
			log, _ := os.ReadFile(n.errPath)
			return nil, fmt.Errorf("nginx exited (%v): %s%s", werr, out.String(), log)
		case <-time.After(10 * time.Millisecond): // bounded poll until it listens
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("nginx not accepting on %s within 10s", n.addr)
		}
	}
}

// freePort returns a port free on 127.0.0.1 a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// nginxConfig is a single-process nginx (master_process off: no worker
// switching to an unprivileged user that could not write the temporary
// directory) proxying everything to opts.upstream. The error log is at
// info level, where nginx reports clients that close early.
func nginxConfig(n *nginxProc, opts nginxOptions) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("daemon off;")
	p("master_process off;")
	p("worker_processes 1;")
	p("pid %s;", filepath.Join(n.dir, "nginx.pid")) // tryStartNginx waits for it
	p("error_log %s info;", n.errPath)
	p("events { worker_connections 1024; }")
	p("http {")
	p("  access_log %s;", filepath.Join(n.dir, "access.log"))
	// Debian's build puts these in /var/lib/nginx, which only root may
	// write; nginx checks every one of them at start.
	for _, d := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		p("  %s_temp_path %s;", d, filepath.Join(n.dir, "tmp", d))
	}
	p("  upstream app {")
	p("    server %s;", opts.upstream)
	if opts.keepalive > 0 {
		p("    keepalive %d;", opts.keepalive)
	}
	p("  }")
	p("  server {")
	p("    listen %s;", n.addr)
	p("    location / {")
	p("      proxy_pass http://app;")
	if opts.keepalive > 0 {
		p("      proxy_http_version 1.1;")
		p(`      proxy_set_header Connection "";`)
	}
	if opts.readTimeout > 0 {
		p("      proxy_read_timeout %dms;", opts.readTimeout.Milliseconds())
	}
	p("    }")
	p("  }")
	p("}")
	return b.String()
}

// mixedBurst sends workers × perWorker requests through nginx, each worker
// one after the other over a keep-alive client, in turn GET /fast, GET
// /slow and POST /post with a 4 KiB body, and reports every transport
// error and every status other than 200.
func mixedBurst(t testing.TB, n *nginxProc, workers, perWorker int) {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 2 * hangupWait}
	paths := []string{"/fast", "/slow", "/post"}
	errs := make(chan error, workers*perWorker)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			for j := range perWorker {
				path := paths[(i+j)%len(paths)]
				var resp *http.Response
				var err error
				if path == "/post" {
					resp, err = client.Post("http://"+n.addr+path, "application/octet-stream", strings.NewReader(strings.Repeat("y", 4096)))
				} else {
					resp, err = client.Get("http://" + n.addr + path)
				}
				if err != nil {
					errs <- err
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					errs <- fmt.Errorf("%s: status %d %s", path, resp.StatusCode, body)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
