// Command registryseed makes one image with a single random layer of the
// given size and writes it both into a rackboot image store (as `rackboot
// assets pull` leaves it) and to a registry over plain HTTP, so that
// `make bench` (P7) can serve the same blob from both. It prints the
// layer's digest.
package main

import (
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"log"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/dotfile/rackboot/registry"
)

func main() {
	store := flag.String("store", "", "rackboot image store directory (<state>/assets/images)")
	push := flag.String("push", "", "registry host:port to push to over plain HTTP")
	ref := flag.String("ref", "registry.k8s.io/bench:1", "the image's name in the store; pushed as <push>/<repository>:<tag>")
	size := flag.Int64("size", 100<<20, "layer size in bytes (random, so incompressible)")
	flag.Parse()
	if *store == "" || *push == "" {
		log.Fatal("registryseed: -store and -push are required")
	}
	data := make([]byte, *size)
	if _, err := io.ReadFull(rand.Reader, data); err != nil {
		log.Fatal(err)
	}
	layer := static.NewLayer(data, types.OCIUncompressedLayer)
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		log.Fatal(err)
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		log.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		log.Fatal(err)
	}
	st, err := registry.Open(*store)
	if err != nil {
		log.Fatal(err)
	}
	if err := st.Put(*ref, img); err != nil {
		log.Fatal(err)
	}
	r, err := registry.ParseRef(*ref)
	if err != nil {
		log.Fatal(err)
	}
	tag, err := name.NewTag(*push+"/"+r.Repo+":"+r.Tag, name.Insecure)
	if err != nil {
		log.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		log.Fatal(err)
	}
	d, err := layer.Digest()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(d)
}
