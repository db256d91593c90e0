package echo

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func TestWebSocketEcho(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()

	for _, path := range []string{"/ws", "/nested/ws"} {
		t.Run(path, func(t *testing.T) {
			d := websocket.Dialer{
				HandshakeTimeout: 5 * time.Second,
				Subprotocols:     []string{"chat.v2", "chat.v1"},
			}
			url := "ws" + strings.TrimPrefix(srv.URL, "http") + path
			conn, resp, err := d.Dial(url, nil)
			if err != nil {
				t.Fatalf("dial %s: %v", url, err)
			}
			defer conn.Close()
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("status = %d, want 101", resp.StatusCode)
			}
			if got := conn.Subprotocol(); got != "chat.v2" {
				t.Errorf("subprotocol = %q, want %q", got, "chat.v2")
			}
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))

			for _, m := range []struct {
				typ  int
				data string
			}{
				{websocket.TextMessage, "hello"},
				{websocket.BinaryMessage, "\x00\x01\x02"},
				{websocket.TextMessage, "second line"},
			} {
				if err := conn.WriteMessage(m.typ, []byte(m.data)); err != nil {
					t.Fatalf("write: %v", err)
				}
				typ, data, err := conn.ReadMessage()
				if err != nil {
					t.Fatalf("read: %v", err)
				}
				if typ != m.typ || string(data) != m.data {
					t.Errorf("echo = (%d, %q), want (%d, %q)", typ, data, m.typ, m.data)
				}
			}
		})
	}
}

func TestWebSocketNoSubprotocol(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()

	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	if got := conn.Subprotocol(); got != "" {
		t.Errorf("subprotocol = %q, want none", got)
	}
}

func TestPlainGET(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()

	req, err := http.NewRequest(http.MethodGet, srv.URL+"/some/path?q=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Upgrade", "h2c")
	req.Header.Set("Connection", "Upgrade, HTTP2-Settings")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d, want 200", resp.StatusCode)
	}
	want := "echo backend: GET /some/path\nUpgrade: h2c\nConnection: Upgrade, HTTP2-Settings\n"
	if string(body) != want {
		t.Errorf("body = %q, want %q", body, want)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type = %q, want text/plain", ct)
	}
}

func TestPlainGETWithoutUpgrade(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()

	resp, err := srv.Client().Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if !strings.HasPrefix(string(body), "echo backend: GET /\n") {
		t.Errorf("body = %q", body)
	}
	if !strings.Contains(string(body), "\nUpgrade: \n") {
		t.Errorf("body should show an empty Upgrade header: %q", body)
	}
}

// A plain GET to /ws (no upgrade headers) is refused by the WebSocket
// upgrader rather than answered with the plain-text page.
func TestPlainGETOnWSPath(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()

	resp, err := srv.Client().Get(srv.URL + "/ws")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("status = %d, want 400", resp.StatusCode)
	}
}
