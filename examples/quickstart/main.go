package main

import (
	"log"
	"time"

	"github.com/fasttimeout/fasttimeout"
	"github.com/valyala/fasthttp"
)

func main() {
	timeout, err := fasttimeout.TimeoutFromEnv("REQUEST_TIMEOUT", 5*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(fasthttp.ListenAndServe(":8080", fasttimeout.New(handler, fasttimeout.Config{
		Timeout: timeout,
	})))
}

func handler(ctx *fasthttp.RequestCtx) {
	// A context.Context with the request's deadline, for database drivers
	// and HTTP clients: it is cancelled at the deadline.
	c := fasttimeout.Context(ctx)
	select {
	case <-time.After(2 * time.Second): // slow work
		ctx.SetBodyString("done")
	case <-c.Done():
		// At the deadline fasttimeout has answered 504 already; this answer
		// goes out only when the server shuts down first.
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
	}
}
