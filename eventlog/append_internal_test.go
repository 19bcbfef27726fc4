package eventlog

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

// Postgres's 54000 (program limit exceeded: a value whose jsonb form is
// over jsonb's size limit, though its text passed MaxDataLen) is reported
// as an invalid event, with the database's error kept.
func TestAppendErrorProgramLimitIsInvalidEvent(t *testing.T) {
	t.Parallel()
	pgErr := &pgconn.PgError{Code: "54000", Message: "total size of jsonb array elements exceeds the maximum of 268435455 bytes"}
	err := (&Log{}).appendError("s", []NewEvent{{Type: "big"}}, pgErr)
	require.ErrorIs(t, err, ErrInvalidEvent)
	require.ErrorIs(t, err, pgErr)
	var ie *InvalidEventError
	require.ErrorAs(t, err, &ie)
	require.Equal(t, "data", ie.Field)
	require.Equal(t, 0, ie.Index)
}
