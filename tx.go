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
// the event's savepoint undoes), and a statement given a ctx that has
// already ended fails at once (see detach), so that a run of many short
// statements stops at its Timeout too.
type detachedTx struct{ pgx.Tx }

// detach returns the context a statement runs on: ctx without its
// cancellation, or, once ctx has ended, ctx itself, with which pgx
// refuses the statement before sending it and leaves the connection be.
func detach(ctx context.Context) context.Context {
	if ctx.Err() != nil {
		return ctx
	}
	return context.WithoutCancel(ctx)
}

func (t detachedTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return t.Tx.Exec(detach(ctx), sql, args...)
}

func (t detachedTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return t.Tx.Query(detach(ctx), sql, args...)
}

func (t detachedTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return t.Tx.QueryRow(detach(ctx), sql, args...)
}

func (t detachedTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return t.Tx.SendBatch(detach(ctx), b)
}

func (t detachedTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	return t.Tx.CopyFrom(detach(ctx), table, columns, src)
}

func (t detachedTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	return t.Tx.Prepare(detach(ctx), name, sql)
}

func (t detachedTx) Begin(ctx context.Context) (pgx.Tx, error) {
	nested, err := t.Tx.Begin(detach(ctx))
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
