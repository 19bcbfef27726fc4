// Package sqlschema validates schema names and renders SQL templates that
// refer to tables in a configurable schema.
//
// Every wharf package keeps its SQL with the placeholder {schema} in place of
// the schema name. The name is validated once, as a plain lower-case SQL
// identifier, and then substituted quoted, so no SQL is ever built from an
// unchecked string.
package sqlschema

import (
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Default is the schema every package uses when its config leaves it empty.
const Default = "wharf"

// maxIdentifierBytes is Postgres's NAMEDATALEN - 1: longer names are
// silently truncated by the server, which would make two schemas collide.
const maxIdentifierBytes = 63

// placeholder is what SQL templates write where the quoted schema goes.
const placeholder = "{schema}"

// Validate reports whether name is usable as a schema name: 1 to 63 bytes of
// lower-case ASCII letters, digits and underscores, not starting with a
// digit. Upper case is refused because Postgres folds unquoted names to lower
// case, and a name that means two things depending on quoting is a trap for
// anyone who reads the tables with psql.
func Validate(name string) error {
	if name == "" {
		return fmt.Errorf("schema name is empty")
	}
	if len(name) > maxIdentifierBytes {
		return fmt.Errorf("schema name %q is longer than %d bytes", name, maxIdentifierBytes)
	}
	for i, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r == '_':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return fmt.Errorf("schema name %q is not a lower-case SQL identifier ([a-z_][a-z0-9_]*)", name)
		}
	}
	if strings.HasPrefix(name, "pg_") {
		return fmt.Errorf("schema name %q uses the reserved prefix pg_", name)
	}
	return nil
}

// Or returns name, or Default when name is empty.
func Or(name string) string {
	if name == "" {
		return Default
	}
	return name
}

// Render returns sql with every {schema} replaced by the quoted schema name.
// The caller must have validated schema with Validate.
func Render(sql, schema string) string {
	return strings.ReplaceAll(sql, placeholder, pgx.Identifier{schema}.Sanitize())
}
