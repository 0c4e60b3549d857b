// Command talosimages prints what Talos's own pkg/images.List (module
// github.com/siderolabs/talos v1.13.0) returns for machine config files:
// one JSON object per file, field name of images.Versions → reference.
// profiles' TestImagesMatchTalos builds and runs it to check
// profiles.Rack.Images against Talos's code. It is a separate module, so
// that rackboot's go.mod does not take the main talos module.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"

	"github.com/siderolabs/talos/pkg/images"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
)

func main() {
	enc := json.NewEncoder(os.Stdout)
	for _, path := range os.Args[1:] {
		cfg, err := configloader.NewFromFile(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "talosimages: %s: %v\n", path, err)
			os.Exit(1)
		}
		v := reflect.ValueOf(images.List(cfg))
		out := map[string]string{}
		for i := range v.NumField() {
			out[v.Type().Field(i).Name] = fmt.Sprint(v.Field(i).Interface())
		}
		if err := enc.Encode(out); err != nil {
			fmt.Fprintf(os.Stderr, "talosimages: %v\n", err)
			os.Exit(1)
		}
	}
}
