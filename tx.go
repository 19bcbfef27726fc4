package wharf

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// detachedTx runs a timed handler's statements with contexts that its
// timeout does not cancel: cancelling a running pgx query closes the
// connection, which would end the transaction that every event of the
// batch shares. The statement_timeout set for the handler bounds them
// instead; Postgres enforces it by failing the statement, which the
// event's savepoint undoes.
type detachedTx struct{ pgx.Tx }

func (t detachedTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return t.Tx.Exec(context.WithoutCancel(ctx), sql, args...)
}

func (t detachedTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return t.Tx.Query(context.WithoutCancel(ctx), sql, args...)
}

func (t detachedTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return t.Tx.QueryRow(context.WithoutCancel(ctx), sql, args...)
}

func (t detachedTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return t.Tx.SendBatch(context.WithoutCancel(ctx), b)
}

func (t detachedTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	return t.Tx.CopyFrom(context.WithoutCancel(ctx), table, columns, src)
}

func (t detachedTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	return t.Tx.Prepare(context.WithoutCancel(ctx), name, sql)
}

func (t detachedTx) Begin(ctx context.Context) (pgx.Tx, error) {
	nested, err := t.Tx.Begin(context.WithoutCancel(ctx))
	if err != nil {
		return nil, err
	}
	return detachedTx{nested}, nil
}

func (t detachedTx) Commit(ctx context.Context) error {
	return t.Tx.Commit(context.WithoutCancel(ctx))
}

func (t detachedTx) Rollback(ctx context.Context) error {
	return t.Tx.Rollback(context.WithoutCancel(ctx))
}
