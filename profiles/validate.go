package profiles

// Validate checks the rack's meaning and returns every problem at once, each
// with the place in the file and what to write instead.
func (r *Rack) Validate() Problems {
	var ps Problems
	ps = append(ps, talosProblems(r)...)
	return ps
}
