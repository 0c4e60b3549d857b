package appdb

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/dotfile/rackboot/internal/atomicfile"
)

// passwordMode is the only mode a password file may have.
const passwordMode fs.FileMode = 0o600

// PasswordFile is where app's password is kept under dir.
func PasswordFile(dir, app string) string { return filepath.Join(dir, app+".password") }

// LoadOrCreatePasswords returns each app's password from dir, making the
// missing ones (32 random bytes, base64url: 43 characters that need no
// quoting in a URI or SQL). A password file is written once (0600,
// atomically, never replaced): a second run reads the same passwords, so
// nothing is rotated by accident. A file readable by others, or empty, is an
// error naming it; it is left untouched.
func LoadOrCreatePasswords(dir string, apps []string) (map[string]string, error) {
	out := make(map[string]string, len(apps))
	if len(apps) == 0 {
		return out, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("app database passwords: %w", err)
	}
	for _, app := range apps {
		pw, err := loadPassword(PasswordFile(dir, app))
		if errors.Is(err, fs.ErrNotExist) {
			pw, err = createPassword(PasswordFile(dir, app))
		}
		if err != nil {
			return nil, err
		}
		out[app] = pw
	}
	return out, nil
}

// LoadPasswords reads the passwords that exist, creating nothing (for
// commands that only read).
func LoadPasswords(dir string, apps []string) (map[string]string, error) {
	out := map[string]string{}
	for _, app := range apps {
		pw, err := loadPassword(PasswordFile(dir, app))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[app] = pw
	}
	return out, nil
}

func loadPassword(path string) (string, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return "", fmt.Errorf("app database password: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("app database password %s is not a regular file (left untouched)", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("app database password %s has mode %04o: only its owner may read it; run `chmod 600 %s` (the file was left untouched)", path, perm, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read app database password: %w", err)
	}
	pw := strings.TrimSpace(string(b))
	if pw == "" || strings.ContainsAny(pw, "'\"\\ \n") {
		return "", fmt.Errorf("app database password %s is empty or holds quotes, backslashes or spaces (left untouched): restore it from a backup, or move it away to make a new one (and update the app)", path)
	}
	return pw, nil
}

func createPassword(path string) (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("new app database password: %w", err)
	}
	pw := base64.RawURLEncoding.EncodeToString(b)
	if err := atomicfile.WriteNew(path, []byte(pw+"\n"), passwordMode); err != nil {
		if errors.Is(err, atomicfile.ErrExists) {
			// Another rackboot made it meanwhile: use theirs.
			return loadPassword(path)
		}
		return "", fmt.Errorf("write app database password: %w", err)
	}
	return pw, nil
}
