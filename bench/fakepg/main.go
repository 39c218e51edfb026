// Command fakepg is a stand-in PostgreSQL server for measuring a proxy's
// memory per idle connection at a scale a real server on the same small
// machine cannot hold (10,000 backends): it logs every client in without a
// password (AuthenticationOk, BackendKeyData, ReadyForQuery), answers
// every simple Query with CommandComplete "SELECT 1" and ReadyForQuery,
// and closes on Terminate. It prints its address on stdout and serves
// until killed.
//
//	go run ./bench/fakepg -listen 127.0.0.1:0
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	flag.Parse()
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakepg:", err)
		os.Exit(1)
	}
	fmt.Println(l.Addr())
	for {
		c, err := l.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "fakepg: accept:", err)
			continue
		}
		go serve(c)
	}
}

func msg(typ byte, body string) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	return append(b, body...)
}

var (
	login  = append(append(msg('R', "\x00\x00\x00\x00"), msg('K', "\x00\x00\x00\x01\x00\x00\x00\x02")...), msg('Z', "I")...)
	answer = append(msg('C', "SELECT 1\x00"), msg('Z', "I")...)
)

func serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 512)
	for { // startup: SSLRequest and GSSENCRequest are refused
		var hdr [8]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(hdr[:4]))
		if n < 8 || n > 10000 {
			return
		}
		if _, err := r.Discard(n - 8); err != nil {
			return
		}
		if code := binary.BigEndian.Uint32(hdr[4:]); code == 80877103 || code == 80877104 {
			c.Write([]byte{'N'})
			continue
		}
		break
	}
	if _, err := c.Write(login); err != nil {
		return
	}
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(hdr[1:]))
		if n < 4 {
			return
		}
		if _, err := r.Discard(n - 4); err != nil {
			if !errors.Is(err, io.EOF) {
				return
			}
		}
		switch hdr[0] {
		case 'Q':
			if _, err := c.Write(answer); err != nil {
				return
			}
		case 'X':
			return
		}
	}
}
