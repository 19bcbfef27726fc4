package queue

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

const (
	savepointSQL         = `SAVEPOINT wharf_event`
	rollbackSavepointSQL = `ROLLBACK TO SAVEPOINT wharf_event`
)

// handlerTx is the transaction a Handler sees: the consumer's batch
// transaction, minus the power to end it, with the event's savepoint taken
// lazily. A handler that never touches the database costs no round trip;
// one that does gets SAVEPOINT sent ahead of its first statement, in the
// same round trip where it can.
//
// Savepoints are never released: each event's savepoint nests in the
// previous one, and ROLLBACK TO undoes only the latest event's work.
// Releasing would not spare subtransactions (their ids stay with the
// transaction until it ends), only round trips.
type handlerTx struct {
	pgx.Tx
	savepoint bool // SAVEPOINT sent for this event
	err       error
}

// ensureSavepoint sends SAVEPOINT unless it was sent already.
func (t *handlerTx) ensureSavepoint(ctx context.Context) error {
	if t.savepoint {
		return nil
	}
	if _, err := t.Tx.Exec(ctx, savepointSQL); err != nil {
		return err
	}
	t.savepoint = true
	return nil
}

// Exec sends the savepoint and the statement in one round trip the first
// time, as a pipelined batch inside the transaction, when a batch sends
// the statement as Exec would (see execForm); otherwise the savepoint
// goes first, on its own.
func (t *handlerTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if t.savepoint {
		return t.Tx.Exec(ctx, sql, args...)
	}
	sql, args, batchable, err := t.execForm(ctx, sql, args)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	if !batchable {
		if err := t.ensureSavepoint(ctx); err != nil {
			return pgconn.CommandTag{}, err
		}
		return t.Tx.Exec(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(savepointSQL)
	b.Queue(sql, args...)
	br := t.Tx.SendBatch(ctx, b)
	_, err = br.Exec()
	if err == nil {
		t.savepoint = true
	}
	var tag pgconn.CommandTag
	if err == nil {
		tag, err = br.Exec()
	}
	if closeErr := br.Close(); err == nil {
		err = closeErr
	}
	return tag, err
}

// execForm applies an Exec's pgx option arguments as Conn.Exec does
// (a QueryRewriter rewrites sql and args) and reports whether a batch
// would send the result the same way. It would not when no arguments are
// left, which Exec sends by the simple protocol, where one string may
// hold several statements and a batch's prepared statement may not, nor
// when a QueryExecMode argument picks a mode, which a batch ignores.
func (t *handlerTx) execForm(ctx context.Context, sql string, args []any) (string, []any, bool, error) {
	var rewriter pgx.QueryRewriter
	rest := args
options:
	for len(rest) > 0 {
		switch arg := rest[0].(type) {
		case pgx.QueryExecMode:
			return sql, args, false, nil
		case pgx.QueryRewriter:
			rewriter = arg
			rest = rest[1:]
		default:
			break options
		}
	}
	if rewriter != nil {
		var err error
		if sql, rest, err = rewriter.RewriteQuery(ctx, t.Tx.Conn(), sql, rest); err != nil {
			return "", nil, false, fmt.Errorf("rewrite query failed: %w", err)
		}
	}
	return sql, rest, len(rest) > 0, nil
}

func (t *handlerTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := t.ensureSavepoint(ctx); err != nil {
		return nil, err
	}
	return t.Tx.Query(ctx, sql, args...)
}

func (t *handlerTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := t.ensureSavepoint(ctx); err != nil {
		return errRow{err}
	}
	return t.Tx.QueryRow(ctx, sql, args...)
}

func (t *handlerTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if err := t.ensureSavepoint(ctx); err != nil {
		return pgx.FailedBatchResults(b, err)
	}
	return t.Tx.SendBatch(ctx, b)
}

func (t *handlerTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if err := t.ensureSavepoint(ctx); err != nil {
		return 0, err
	}
	return t.Tx.CopyFrom(ctx, table, columns, src)
}

func (t *handlerTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if err := t.ensureSavepoint(ctx); err != nil {
		return nil, err
	}
	return t.Tx.Prepare(ctx, name, sql)
}

// Begin starts a pseudo nested transaction (a savepoint of its own) inside
// the event's savepoint.
func (t *handlerTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := t.ensureSavepoint(ctx); err != nil {
		return nil, err
	}
	return t.Tx.Begin(ctx)
}

// LargeObjects and Conn hand out access that cannot be intercepted, so the
// savepoint is taken first; a failure shows when the handler returns.
func (t *handlerTx) LargeObjects() pgx.LargeObjects {
	t.err = t.ensureSavepoint(context.Background())
	return t.Tx.LargeObjects()
}

func (t *handlerTx) Conn() *pgx.Conn {
	t.err = t.ensureSavepoint(context.Background())
	return t.Tx.Conn()
}

func (*handlerTx) Commit(context.Context) error   { return ErrTxOwned }
func (*handlerTx) Rollback(context.Context) error { return ErrTxOwned }

// failed reports whether the transaction can no longer run statements: a
// statement in it failed (Postgres aborts the transaction until a rollback
// to a savepoint), or the connection is gone.
func (t *handlerTx) failed() bool {
	status := t.Tx.Conn().PgConn().TxStatus()
	return status != 'T' // 'T': in a transaction block; 'E': failed; 'I': none
}

// Aborted reports whether tx, as a Handler or BatchHandler was given it,
// can run no more statements because one of its statements failed: the
// Consumer will then record ErrTxAborted, whatever the handler returns.
// For a handler's tx it costs no round trip, and takes no savepoint.
func Aborted(tx pgx.Tx) bool {
	if t, ok := tx.(*handlerTx); ok {
		return t.savepoint && t.failed()
	}
	return tx.Conn().PgConn().TxStatus() == 'E'
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }
