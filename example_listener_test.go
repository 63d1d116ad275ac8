package fasttimeout_test

import (
	"fmt"
	"log"
	"net"
	"os"

	"github.com/fasttimeout/fasttimeout"
	"github.com/valyala/fasthttp"
)

// RetryListener keeps a server accepting through a flood of connections
// that exhausts its descriptors: wrap the listener given to Serve.
func ExampleRetryListener() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	logger := log.New(os.Stderr, "", log.LstdFlags)
	server := &fasthttp.Server{
		Handler: fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
			ctx.SetBodyString("hello")
		}, fasttimeout.Config{}),
		Logger: logger,
	}
	served := make(chan error, 1)
	go func() { served <- server.Serve(fasttimeout.RetryListener(ln, logger)) }()

	client := &fasthttp.Client{Dial: func(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }}
	status, body, err := client.Get(nil, "http://"+ln.Addr().String()+"/")
	fmt.Println(status, string(body), err)
	client.CloseIdleConnections()

	_ = server.Shutdown() // closes the listener
	fmt.Println("Serve:", <-served)
	// Output:
	// 200 hello <nil>
	// Serve: <nil>
}
