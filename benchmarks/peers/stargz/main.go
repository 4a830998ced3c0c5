// stargz-grpc-mini serves stargz-snapshotter's snapshotter (its fs and snapshot packages) on
// containerd's snapshots gRPC API over a unix socket, for benchmarks/peers/stargz.py.
//
// Debian ships the stargz library but not its containerd-stargz-grpc daemon; the daemon's service
// package needs the CRI API, which Debian's Go path lacks, so this program wires the fs and
// snapshot packages itself. Every registry is reached over plain HTTP (the bench's registry is
// `lazyctr serve` on a private address); layers come from containerd's default labels, which
// `ctr-remote image rpull` sets.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/reference"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/containerd/containerd/snapshots/overlay/overlayutils"
	stargzfs "github.com/containerd/stargz-snapshotter/fs"
	"github.com/containerd/stargz-snapshotter/fs/config"
	"github.com/containerd/stargz-snapshotter/fs/layer"
	"github.com/containerd/stargz-snapshotter/fs/source"
	snbase "github.com/containerd/stargz-snapshotter/snapshot"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
)

func main() {
	address := flag.String("address", "", "unix socket to serve the snapshots API on")
	root := flag.String("root", "", "directory for snapshots and the layer cache")
	noPrefetch := flag.Bool("no-prefetch", false, "do not prefetch the landmarked part of layers")
	noBackground := flag.Bool("no-background-fetch", false, "do not fetch whole layers in the background")
	debug := flag.Bool("debug", false, "debug logging")
	flag.Parse()
	if *address == "" || *root == "" {
		fmt.Fprintln(os.Stderr, "usage: stargz-grpc-mini -address SOCKET -root DIR")
		os.Exit(2)
	}
	if *debug {
		logrus.SetLevel(logrus.DebugLevel)
	}
	if err := run(*address, *root, config.Config{NoPrefetch: *noPrefetch, NoBackgroundFetch: *noBackground, NoPrometheus: true}); err != nil {
		fmt.Fprintf(os.Stderr, "stargz-grpc-mini: %v\n", err)
		os.Exit(1)
	}
}

// plainHTTPHosts gives every registry over plain HTTP. The client must have a transport: the fs
// package's remote fetcher calls host.Client.Transport directly (nil would crash it), and the
// request timeout is upstream's default.
func plainHTTPHosts(ref reference.Spec) ([]docker.RegistryHost, error) {
	plain := func(string) (bool, error) { return true, nil }
	client := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone(), Timeout: 30 * time.Second}
	return docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(plain), docker.WithClient(client))(ref.Hostname())
}

func run(address, root string, cfg config.Config) error {
	ctx := context.Background()
	snRoot := filepath.Join(root, "snapshotter")
	if err := os.MkdirAll(snRoot, 0o700); err != nil {
		return err
	}
	userxattr, err := overlayutils.NeedsUserXAttr(snRoot)
	if err != nil {
		log.G(ctx).WithError(err).Warn("cannot tell whether overlayfs needs userxattr")
	}
	opaque := layer.OverlayOpaqueTrusted
	if userxattr {
		opaque = layer.OverlayOpaqueUser
	}
	fs, err := stargzfs.NewFilesystem(filepath.Join(root, "stargz"), cfg,
		stargzfs.WithGetSources(source.FromDefaultLabels(plainHTTPHosts)),
		stargzfs.WithOverlayOpaqueType(opaque))
	if err != nil {
		return fmt.Errorf("filesystem: %w", err)
	}
	sn, err := snbase.NewSnapshotter(ctx, snRoot, fs, snbase.AsynchronousRemove)
	if err != nil {
		return fmt.Errorf("snapshotter: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return err
	}
	_ = os.Remove(address) // a stale socket of a killed run
	listener, err := net.Listen("unix", address)
	if err != nil {
		return err
	}
	server := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(server, snapshotservice.FromSnapshotter(sn))
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	errs := make(chan error, 1)
	go func() { errs <- server.Serve(listener) }()
	select {
	case <-signals:
	case err = <-errs:
	}
	server.Stop()
	// Close unmounts every layer's FUSE mount and the snapshots' overlay mounts.
	if cerr := sn.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return err
}
