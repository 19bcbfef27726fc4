package wharf

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// detachedTx runs a timed handler's statements with contexts that its
// timeout does not cancel: cancelling a running pgx query closes the
// connection, which would end the transaction that every event of the
// batch shares. The statement_timeout set for the handler bounds each
// statement instead (Postgres enforces it by failing the statement, which
// the event's savepoint undoes), and once the ctx a statement is given
// has ended, the statement is not sent: it fails at once with ctx's error,
// so that a run of many short statements stops at its Timeout too.
type detachedTx struct{ pgx.Tx }

func (t detachedTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := ctx.Err(); err != nil {
		return pgconn.CommandTag{}, err
	}
	return t.Tx.Exec(context.WithoutCancel(ctx), sql, args...)
}

func (t detachedTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return t.Tx.Query(context.WithoutCancel(ctx), sql, args...)
}

func (t detachedTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := ctx.Err(); err != nil {
		return errRow{err}
	}
	return t.Tx.QueryRow(context.WithoutCancel(ctx), sql, args...)
}

func (t detachedTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if err := ctx.Err(); err != nil {
		return pgx.FailedBatchResults(b, err)
	}
	return t.Tx.SendBatch(context.WithoutCancel(ctx), b)
}

func (t detachedTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return t.Tx.CopyFrom(context.WithoutCancel(ctx), table, columns, src)
}

func (t detachedTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return t.Tx.Prepare(context.WithoutCancel(ctx), name, sql)
}

func (t detachedTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	nested, err := t.Tx.Begin(context.WithoutCancel(ctx))
	if err != nil {
		return nil, err
	}
	return detachedTx{nested}, nil
}

// Commit and Rollback end a nested pseudo-transaction (a savepoint) even
// after the deadline: a handler cleaning up must be able to.
func (t detachedTx) Commit(ctx context.Context) error {
	return t.Tx.Commit(context.WithoutCancel(ctx))
}

func (t detachedTx) Rollback(ctx context.Context) error {
	return t.Tx.Rollback(context.WithoutCancel(ctx))
}

// errRow is a pgx.Row whose Scan returns err.
type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }
