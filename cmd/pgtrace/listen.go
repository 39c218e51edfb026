package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/dotmac/pgtrace/wire"
)

// listenClients opens the listener for --listen: TCP for host:port, a Unix
// socket for a path. Like PostgreSQL and PgBouncer, it replaces a socket
// file that a process now gone left behind, refuses one that a live server
// answers on, and makes the socket connectable by every local user
// (authentication is PostgreSQL's). Closing the listener removes the file.
func listenClients(ctx context.Context, lc *net.ListenConfig, addr string) (net.Listener, error) {
	network, path := wire.Network(addr)
	if network == "tcp" {
		return lc.Listen(ctx, "tcp", addr)
	}
	if err := unixSocketFree(path); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	l, err := lc.Listen(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o777); err != nil {
		l.Close()
		return nil, fmt.Errorf("make the socket connectable: %w", err)
	}
	return l, nil
}

// unixSocketFree reports an error when path is something other than a
// socket, or a socket that a server accepts connections on.
func unixSocketFree(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return errors.New("the file exists and is not a Unix socket")
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return nil // left behind by a process that is gone
	case err != nil:
		// A live server with a full backlog (EAGAIN), or no permission:
		// not a socket to take away.
		return fmt.Errorf("the socket exists and cannot be checked: %w", err)
	}
	c.Close()
	return errors.New("a server already listens on this socket")
}
