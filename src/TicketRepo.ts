/**
 * Tickets as the regeneration sees them: pages of ids in scope by keyset, or spans of the whole table; one
 * set-based UPDATE per batch; counts, and the reads `verify` needs. The SQL implementation serves
 * MySQL/MariaDB and SQLite.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import { randomBytes } from "node:crypto"
import {
  affectedRows,
  answeredWithin,
  databaseError,
  datetime,
  Db,
  onOwnConnection,
  probe,
  requireGrants,
  retryingDatabase,
  schemaCheck,
  schemaWarnings,
  statementText,
  toCount,
  writeError
} from "./Db.js"
import {
  type DatabaseError,
  type DuplicateToken,
  type GrantMissing,
  idPattern,
  SchemaMismatch,
  type SchemaMissing,
  type Scope,
  SpanChanged
} from "./Domain.js"

/**
 * A keyset page of a scope: its ids after a cursor, and how far the table was read for them. A sparse scope
 * may leave a page short (even empty) before the end of the table: each read is bounded (see `scanBounds`).
 */
export interface Page {
  /** Ids in scope after the cursor, ascending; at most the limit asked for. */
  readonly ids: ReadonlyArray<string>
  /**
   * How far the table was read: every id in scope between the cursor and `through` (inclusive) is in
   * `ids`. The last id when the page is full; beyond it (a stretch with none in scope) when it is short.
   */
  readonly through: string
  /** The table was read to its end: no id in scope after `through`. */
  readonly end: boolean
}

/**
 * A batch of the whole table named by its bounds rather than its ids: every ticket in (`after`, `through`],
 * `rows` of them when it was read. Reading one costs the server one row instead of a page of ids.
 */
export interface Span {
  readonly after: string
  readonly through: string
  readonly rows: number
}

export interface AuditPage extends Page {
  /** Ids of the page whose `updated_at` is before the given instant. */
  readonly stale: ReadonlyArray<string>
}

export interface DuplicateTokens {
  /** How many token values are held by more than one ticket. */
  readonly values: number
  /** Ids of a few tickets that share a token (never the token itself). */
  readonly sample: ReadonlyArray<string>
}

export interface TicketRepoService {
  /**
   * Fails unless the ticket, order and user tables exist with the expected columns; what a usable schema
   * still warns of (see `Db.schemaWarnings`).
   */
  readonly checkSchema: Effect.Effect<ReadonlyArray<string>, SchemaMissing | SchemaMismatch | DatabaseError>
  /** Up to `limit` ids in scope greater than `after`, ascending, and how far the table was read for them. */
  readonly page: (
    scope: Scope,
    after: string,
    limit: number
  ) => Effect.Effect<Page, DatabaseError | SchemaMismatch>
  /**
   * Gives each of `ids` its own token from `tokens` (`tokens[i]` on `ids[i]`) and sets `updated_at`, by key,
   * in one statement (one transaction: all of the batch or none of it). Returns the number of tickets
   * changed (fewer when some were deleted meanwhile).
   */
  readonly rotate: (
    ids: ReadonlyArray<string>,
    tokens: ReadonlyArray<string>,
    at: Date
  ) => Effect.Effect<number, DatabaseError | DuplicateToken>
  /**
   * Whether batches of `scope` may be spans (see `rotateSpan`): the scope is the whole table, and the server
   * refuses a range UPDATE that runs past its tokens. Otherwise every batch is a page of ids.
   */
  readonly canSpan: (scope: Scope) => Effect.Effect<boolean>
  /**
   * Up to `count` consecutive spans of `rows` tickets each after `after`, in one statement; fewer near the end
   * of the table, none when fewer than `rows` tickets remain (read those as a page).
   */
  readonly spans: (
    after: string,
    rows: number,
    count: number
  ) => Effect.Effect<ReadonlyArray<Span>, DatabaseError | SchemaMismatch>
  /**
   * Gives every ticket of the span its own token, in key order from `tokens`, and sets `updated_at`, in one
   * statement. `SpanChanged` when it now holds more tickets than tokens (the site inserted some) or the server
   * refused the statement: nothing changed, and the span goes by key (`spanIds`, then `rotate`).
   */
  readonly rotateSpan: (
    span: Span,
    tokens: ReadonlyArray<string>,
    at: Date
  ) => Effect.Effect<number, DatabaseError | SpanChanged>
  /** The ids now in the span, ascending. */
  readonly spanIds: (span: Span) => Effect.Effect<ReadonlyArray<string>, DatabaseError | SchemaMismatch>
  /** Tickets in scope. */
  readonly count: (scope: Scope) => Effect.Effect<number, DatabaseError>
  /** Smallest and largest ticket id (for a progress estimate without a count). */
  readonly idRange: Effect.Effect<Option.Option<readonly [string, string]>, DatabaseError>
  /** A keyset page of ids in scope, with those not updated since `since`. */
  readonly audit: (
    scope: Scope,
    after: string,
    limit: number,
    since: Date
  ) => Effect.Effect<AuditPage, DatabaseError | SchemaMismatch>
  /** Token values held by more than one ticket. */
  readonly duplicateTokens: Effect.Effect<DuplicateTokens, DatabaseError>
  /** Fails with `GrantMissing` unless the user may rotate tokens (asked without writing: `Db.requireGrants`). */
  readonly mayRotate: Effect.Effect<void, GrantMissing | DatabaseError>
}

export class TicketRepo extends Context.Tag("TicketRepo")<TicketRepo, TicketRepoService>() {}

/**
 * The repository's schema check, answered within `timeout` as a whole (each of its statements gets
 * `Db.probeTimeout` at most too): a run's or a verify's `--statement-timeout` bounds it when lower.
 */
export const checkSchemaWithin = (timeout: Duration.Duration) =>
  Effect.flatMap(TicketRepo, (repo) => answeredWithin(timeout, "checking the schema")(repo.checkSchema))

/**
 * `date` cut to a column that keeps `digits` fractional digits of a second: what a batch wrote at or after
 * `date` then compares at or after it, whether the server truncated or rounded the value.
 */
const atPrecision = (date: Date, digits: number): Date => {
  const unit = 10 ** Math.max(0, 3 - digits)
  return new Date(Math.floor(date.getTime() / unit) * unit)
}

/** A validated integer for LIMIT: MySQL 8.0.22+ rejects a bound LIMIT in prepared statements, so it is spliced. */
const limitOf = (limit: number): number => {
  if (!Number.isSafeInteger(limit) || limit < 1) throw new RangeError(`invalid LIMIT ${limit}`)
  return limit
}

/**
 * Batches rotated, tagged by the UPDATE form: `range` (a span), `key` (a page of ids), or `key after range`
 * (a span refused as a range, e.g. because the site inserted a ticket into it, which then goes by key).
 */
export const rotations = Metric.counter("ticket_rotations", { description: "batches rotated, by UPDATE form" })
const byForm = {
  range: Metric.increment(Metric.tagged(rotations, "form", "range")),
  key: Metric.increment(Metric.tagged(rotations, "form", "key")),
  refused: Metric.increment(Metric.tagged(rotations, "form", "key after range"))
}

/** Length of a token (32 hex characters); the range form cuts tokens out of one parameter at this stride. */
const tokenLength = 32

/** The tokens end to end as bytes, when every one is 32 ASCII characters (else the span goes by key). */
const packTokens = (tokens: ReadonlyArray<string>): Buffer | undefined => {
  for (const token of tokens) if (token.length !== tokenLength) return undefined
  const packed = Buffer.from(tokens.join(""), "utf8")
  return packed.length === tokens.length * tokenLength ? packed : undefined
}

/**
 * A `--created-…` bound as compared with `created_at`: UTC, microseconds only when there are some. SQLite
 * compares the stored text, and Django writes a whole second there without a fraction
 * (`2024-01-01 00:00:00`), which sorts before `2024-01-01 00:00:00.000000`: a bound written so would miss
 * it. Without the zeros it sorts right against both forms; MySQL compares datetimes either way.
 */
const dateBound = (iso: string): string => datetime(new Date(iso)).replace(/\.000000$/, "")

/** The scope as joins, conditions and bound values; every value is bound, never spliced. */
const scopeSql = (
  scope: Scope,
  /** Pages in key order on this dialect: the plan is pinned to the ticket's primary key (see `keysetPage`). */
  keyset?: "mysql" | "sqlite"
): {
  readonly from: string
  /** Whether the scope needs the order and user tables (otherwise `where` is on the ticket `t` alone). */
  readonly joinsParents: boolean
  readonly where: string
  readonly params: Array<unknown>
} => {
  const conditions: Array<string> = []
  const params: Array<unknown> = []
  const joinParents = scope.liveOnly || scope.emailDomain !== null
  if (scope.liveOnly) {
    conditions.push("t.`deleted_at` IS NULL", "o.`deleted_at` IS NULL", "u.`deleted_at` IS NULL")
  }
  if (scope.emailDomain !== null) {
    // The domain is validated (letters, digits, dots, hyphens), so it holds no LIKE wildcard; lowercased,
    // as the email is here: a column of a binary collation compares case and all.
    conditions.push("LOWER(u.`email`) LIKE ?")
    params.push(`%@${scope.emailDomain}`)
  }
  const createdAt = keyset === "sqlite" ? "+t.`created_at`" : "t.`created_at`"
  if (scope.createdAfter !== null) {
    conditions.push(`${createdAt} >= ?`)
    params.push(dateBound(scope.createdAfter))
  }
  if (scope.createdBefore !== null) {
    conditions.push(`${createdAt} < ?`)
    params.push(dateBound(scope.createdBefore))
  }
  const ticket = keyset === "mysql" && conditions.length > 0 ? "`ticket` t FORCE INDEX (PRIMARY)" : "`ticket` t"
  return {
    joinsParents: joinParents,
    from: joinParents
      ? `${ticket} JOIN \`order\` o ON o.\`id\` = t.\`order_id\` JOIN \`user\` u ON u.\`id\` = o.\`user_id\``
      : ticket,
    where: conditions.map((c) => ` AND ${c}`).join(""),
    params
  }
}

/**
 * A keyset page of the scope: the ids after `after` (up to `upTo` when given) in key order, plus `columns`,
 * whose parameters come first. Never a column being rewritten.
 *
 * Each page must read only as far as its last id, or a run costs pages × scope instead of one pass over
 * the table. Left alone, MySQL/MariaDB start a join with the order and user tables from the small `user`
 * table and sort every ticket of the scope for every page (a 64k-ticket scope of 300k: 4.4k rows/s), so
 * there the ticket comes first (STRAIGHT_JOIN) on its primary key; SQLite, without statistics, walks the
 * `created_at` index for any date range and sorts that whole range for every page, which a unary + on the
 * column rules out.
 */
export const keysetPage = (
  dialect: "mysql" | "sqlite",
  columns: string,
  scope: Scope,
  after: string,
  limit: number,
  upTo?: string
): { readonly text: string; readonly params: ReadonlyArray<unknown> } => {
  const s = scopeSql(scope, dialect)
  const select = dialect === "mysql" && s.joinsParents ? "SELECT STRAIGHT_JOIN" : "SELECT"
  const bound = upTo === undefined ? "" : " AND t.`id` <= ?"
  return {
    text: `${select} t.\`id\`${columns} FROM ${s.from} WHERE t.\`id\` > ?${bound}${s.where} ORDER BY t.\`id\` ` +
      `LIMIT ${limitOf(limit)}`,
    params: upTo === undefined ? [after, ...s.params] : [after, upTo, ...s.params]
  }
}

/**
 * How much of the ticket table one read of a scoped page may cover, in tickets. A scope with conditions can
 * be sparse: one customer's 200 tickets among 30 million, or the stretch after the last one. Read in one
 * statement, such a page would scan the table to its end (4.9 s per million tickets here with the joins of
 * `--email-domain`), past any statement timeout. So a scoped page is read a stretch at a time: first the
 * stretch's end (the id `stretch` tickets on, by the primary key), then the scope's ids within it; the
 * stretch starts at `first` × the page size, grows fourfold while pages come out short, up to `max`, and
 * halves again once a page fills in its first stretch. A page call stops after `perPage` tickets read and
 * returns what it found, short or empty, with how far it got. A scope without conditions needs none of this.
 */
export const scanBounds: ScanBounds = { first: 4, max: 100_000, perPage: 200_000 }

export interface ScanBounds {
  /** The first stretch, in page sizes. */
  readonly first: number
  /** The longest stretch, in tickets. */
  readonly max: number
  /** Tickets read by one page call, at most (give or take one stretch). */
  readonly perPage: number
}

/**
 * The ids `rows`, 2 × `rows`, … `count` × `rows` tickets after a cursor in key order, as far as the table
 * goes: the end of a stretch (`count` 1, both dialects) or of consecutive spans (MySQL). One statement,
 * each part a walk of the primary key that sends one row; every part binds the same cursor. Still keyset
 * iteration: the OFFSET skips at most `count` × `rows` entries after the cursor, never from the table's start
 * (measured against `MAX(id)` of a `LIMIT n` page and `ROW_NUMBER()` over one: no cheaper, see PERFORMANCE.md).
 */
const idsAhead = (rows: number, count: number): string =>
  statementText(`ahead:${rows}:${count}`, () => {
    const part = (k: number) =>
      `SELECT \`id\` FROM \`ticket\` WHERE \`id\` > ? ORDER BY \`id\` LIMIT 1 OFFSET ${limitOf(rows) * k - 1}`
    return count === 1 ? part(1) : Array.from({ length: count }, (_, k) => `(${part(k + 1)})`).join(" UNION ALL ")
  })

/**
 * The batch UPDATE. MySQL joins the ticket table to a derived table of (id, token) pairs; SQLite uses
 * UPDATE … FROM (VALUES …). Both touch only `token` and `updated_at`.
 */
const rotateStatement = (dialect: "mysql" | "sqlite", size: number): string =>
  statementText(`rotate:${dialect}:${size}`, () =>
    dialect === "mysql"
      ? "UPDATE `ticket` AS t JOIN (SELECT ? AS `id`, ? AS `token`" + " UNION ALL SELECT ?, ?".repeat(size - 1) +
        ") AS v ON t.`id` = v.`id` SET t.`token` = v.`token`, t.`updated_at` = ?"
      : "UPDATE `ticket` SET `token` = v.column2, `updated_at` = ? FROM (VALUES " +
        new Array(size).fill("(?, ?)").join(", ") + ") AS v WHERE `ticket`.`id` = v.column1")

/**
 * The span UPDATE on MySQL (the scope has no conditions): every ticket in (after, through], so the server
 * walks that range of the clustered index and updates the rows where they stand, the i-th taking the i-th
 * token, instead of finding each row by key (a third less server CPU per row, see docs/PERFORMANCE.md). Not
 * for a scope with conditions: the range would also hold tickets out of scope, which the statement would
 * read and, under REPEATABLE READ, keep locked to its end — as many as a page of a sparse scope spans (see
 * `scanBounds`). One autocommit statement: `@i` counts the rows, restarting at 1 on the first row of each
 * execution, which the first two parameters mark with a value never used before (`@b`). The tokens come as
 * one binary parameter, all `size` of them end to end, cut by byte offset (one parameter to encode and
 * bind, not one per row). A row past the last token gets NULL, which the strict mode of the tool's
 * sessions refuses (error 1048, `Db.sessionSetup`), rolling the whole statement back.
 */
export const rangeRotateStatement = (size: number): string =>
  statementText(
    `rotate:range:${size}`,
    () =>
      "UPDATE `ticket` AS t FORCE INDEX (PRIMARY) SET t.`token` = SUBSTRING(?, " +
      `IF((@i := IF(@b = ?, @i + 1, (@b := ?) IS NOT NULL)) <= ${limitOf(size)}, @i * ${tokenLength} - ${
        tokenLength - 1
      }, NULL), ${tokenLength}), ` +
      "t.`updated_at` = ? WHERE t.`id` > ? AND t.`id` <= ?"
  )

const rotateParams = (
  dialect: "mysql" | "sqlite",
  ids: ReadonlyArray<string>,
  tokens: ReadonlyArray<string>,
  at: string
): Array<string> => {
  const params = new Array<string>(ids.length * 2 + 1)
  const offset = dialect === "mysql" ? 0 : 1
  for (let i = 0; i < ids.length; i++) {
    params[offset + 2 * i] = ids[i]!
    params[offset + 2 * i + 1] = tokens[i]!
  }
  params[dialect === "mysql" ? ids.length * 2 : 0] = at
  return params
}

/**
 * The ids of a page, checked before any of them is rotated: keyset order, the checkpoint and resume rely
 * on ids being what the app writes (a uuid as 32 lowercase hex characters, which sort the same in the
 * database's collation and in JavaScript).
 */
const ticketIds = (ids: ReadonlyArray<string>): Effect.Effect<ReadonlyArray<string>, SchemaMismatch> => {
  const bad = ids.find((id) => !idPattern.test(id))
  return bad === undefined ? Effect.succeed(ids) : Effect.fail(
    new SchemaMismatch({
      detail: `ticket id "${bad.slice(0, 40)}" is not a uuid as 32 lowercase hex characters`,
      what: "a ticket's id",
      hint: "this tool can only page and checkpoint tickets by such ids"
    })
  )
}

export const makeSql = (bounds: ScanBounds = scanBounds) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const { dialect } = yield* Db

    /**
     * `effect` on a connection of its own: a short lock wait, and killed on the server if interrupted. A driver
     * failure that `effect` leaves unmapped becomes a `DatabaseError` of `operation`.
     */
    const own = <A, E>(operation: string, effect: Effect.Effect<A, E>) =>
      onOwnConnection(dialect)(effect).pipe(
        Effect.catchIf(
          (error): error is SqlError => error instanceof SqlError,
          (error) => Effect.fail(databaseError(operation)(error))
        ),
        Effect.provideService(SqlClient.SqlClient, sql)
      )

    // The stretch a scoped page reads per statement, following the scope's density (see `scanBounds`). Pages
    // are read one after another, by one reader per command.
    let stretch = 0

    /**
     * The rows of a keyset page (`columns` after the id, with `columnParams`), their ids checked, and how far
     * the table was read for them: the whole page at once without conditions, else stretch by stretch.
     */
    const scan = (scope: Scope, columns: string, columnParams: ReadonlyArray<unknown>, after: string, limit: number) =>
      Effect.gen(function*() {
        const read = (from: string, count: number, upTo?: string) => {
          const statement = keysetPage(dialect, columns, scope, from, count, upTo)
          return sql.unsafe(statement.text, [...columnParams, ...statement.params]).values
        }
        const rows: Array<ReadonlyArray<unknown>> = []
        const found = (through: string, end: boolean) =>
          Effect.map(ticketIds(rows.map((row) => String(row[0]))), (ids) => ({ rows, ids, through, end }))
        if (scope.everyTicket) {
          rows.push(...(yield* read(after, limit)))
          return yield* found(rows.length === 0 ? after : String(rows.at(-1)![0]), rows.length < limit)
        }
        const floor = Math.min(bounds.max, bounds.first * limit)
        let size = Math.max(floor, stretch)
        let from = after
        for (let scanned = 0, first = true;; first = false) {
          const ends = yield* sql.unsafe(idsAhead(size, 1), [from]).values
          const upTo = ends.length === 0 ? undefined : String(ends[0]![0])
          if (upTo !== undefined) yield* ticketIds([upTo])
          rows.push(...(yield* read(from, limit - rows.length, upTo)))
          scanned += size
          if (rows.length === limit) {
            stretch = first ? Math.max(floor, size >> 1) : size
            return yield* found(String(rows.at(-1)![0]), false)
          }
          if (upTo === undefined) {
            stretch = size
            return yield* found(rows.length === 0 ? from : String(rows.at(-1)![0]), true)
          }
          from = upTo
          if (scanned >= bounds.perPage) {
            stretch = size
            return yield* found(from, false)
          }
          size = Math.min(bounds.max, size * 4)
        }
      })

    const page = (scope: Scope, after: string, limit: number) =>
      own(
        "reading a page of ticket ids",
        Effect.map(scan(scope, "", [], after, limit), ({ end, ids, through }) => ({ ids, through, end }))
      )

    const rotate = (ids: ReadonlyArray<string>, tokens: ReadonlyArray<string>, at: Date) =>
      ids.length === 0 ? Effect.succeed(0) : own(
        "rotating a batch of tokens",
        sql.unsafe(rotateStatement(dialect, ids.length), rotateParams(dialect, ids, tokens, datetime(at))).raw.pipe(
          Effect.map(affectedRows),
          Effect.mapError(writeError("rotating a batch of tokens")),
          Effect.tap(() => byForm.key)
        )
      )

    // A NOT NULL token column, with the strict mode of the tool's own sessions (`Db.sessionSetup`), turns a
    // token past the last one (a ticket the site inserted into the span after it was read) into an error
    // instead of an empty or NULL token; a nullable one would take the NULL: every batch is then a page of
    // ids, rotated by key.
    const rangesRefusable = yield* Effect.cached(
      dialect === "mysql"
        ? sql.unsafe(
          "SELECT `IS_NULLABLE` FROM information_schema.`COLUMNS` " +
            "WHERE `TABLE_SCHEMA` = DATABASE() AND `TABLE_NAME` = 'ticket' AND `COLUMN_NAME` = 'token'"
        ).values.pipe(
          probe("reading the token column's definition", databaseError("reading the token column's definition")),
          retryingDatabase,
          Effect.provideService(SqlClient.SqlClient, sql),
          Effect.map(([row]) => String(row?.[0]) === "NO"),
          Effect.catchAll((error) =>
            Effect.as(
              Effect.logWarning(
                `could not read the token column's definition (${error.detail}): every batch goes by key (correct, slower)`
              ),
              false
            )
          )
        )
        : Effect.succeed(false)
    )

    const spans = (after: string, rows: number, count: number) =>
      own(
        "reading spans of tickets",
        Effect.gen(function*() {
          const ends = yield* sql.unsafe(idsAhead(rows, count), new Array(count).fill(after)).values
          const throughs = yield* ticketIds(ends.map((row) => String(row[0])).sort())
          return throughs.map((through, k): Span => ({ after: k === 0 ? after : throughs[k - 1]!, through, rows }))
        })
      )

    const markers = { prefix: randomBytes(6).toString("hex"), next: 0 }

    /**
     * A span as one range (see `rangeRotateStatement`). When the span holds more tickets than tokens, the
     * statement fails as a whole: `SpanChanged`; fewer (some were deleted) is fine, every remaining one gets
     * its own token. A server that refuses the form is `SpanChanged` too, and so is a duplicate token: with
     * 122 random bits a real collision practically never happens, so it rather means the server cut the
     * tokens wrongly (the form leans on user variables, deprecated in MySQL 8); by key, a real one still
     * fails as DuplicateToken. Transient errors go to the caller's retry as usual.
     */
    const rotateSpan = (span: Span, tokens: ReadonlyArray<string>, at: Date) => {
      const packed = packTokens(tokens)
      const refused = (detail: string) => Effect.zipRight(byForm.refused, Effect.fail(new SpanChanged({ detail })))
      if (packed === undefined) return refused("the tokens are not all 32 ASCII characters")
      const marker = `${markers.prefix}${markers.next++}`
      return own(
        "rotating a batch of tokens",
        sql.unsafe(rangeRotateStatement(tokens.length), [
          packed,
          marker,
          marker,
          datetime(at),
          span.after,
          span.through
        ]).raw.pipe(Effect.map(affectedRows), Effect.mapError(writeError("rotating a batch of tokens")))
      ).pipe(
        Effect.tap(() => byForm.range),
        Effect.catchAll((error): Effect.Effect<never, DatabaseError | SpanChanged> =>
          error._tag === "DuplicateToken" || !error.transient ? refused(error.detail) : Effect.fail(error)
        )
      )
    }

    // Bounded by the span, which held `rows` tickets moments ago: no LIMIT needed.
    const spanIds = (span: Span) =>
      own(
        "reading the ids of a span",
        Effect.flatMap(
          sql.unsafe("SELECT `id` FROM `ticket` WHERE `id` > ? AND `id` <= ? ORDER BY `id`", [span.after, span.through])
            .values,
          (rows) => ticketIds(rows.map((row) => String(row[0])))
        )
      )

    const count = (scope: Scope) => {
      const s = scopeSql(scope)
      return own(
        "counting tickets in scope",
        Effect.map(
          sql.unsafe(`SELECT COUNT(*) FROM ${s.from} WHERE 1 = 1${s.where}`, s.params).values,
          (rows) => toCount(rows[0]?.[0])
        )
      )
    }

    const idRange = own(
      "reading the ticket id range",
      Effect.map(sql.unsafe("SELECT MIN(`id`), MAX(`id`) FROM `ticket`").values, (rows) => {
        const [min, max] = rows[0] ?? []
        return min === null || min === undefined || max === null || max === undefined
          ? Option.none()
          : Option.some([String(min), String(max)] as const)
      })
    )

    // The fractional digits `updated_at` keeps: an app's table from before MySQL had fractional seconds has
    // none, and the server then truncates (MariaDB) or rounds (MySQL) what a batch writes. Read once.
    let updatedAtDigits: number | undefined
    const updatedAtPrecision = Effect.suspend(() =>
      updatedAtDigits !== undefined ? Effect.succeed(updatedAtDigits) : sql.onDialectOrElse({
        mysql: () =>
          Effect.map(
            sql<{ digits: unknown }>`
              SELECT DATETIME_PRECISION AS digits FROM information_schema.COLUMNS
              WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'ticket' AND COLUMN_NAME = 'updated_at'`,
            ([row]) => (updatedAtDigits = row?.digits === null || row?.digits === undefined ? 6 : toCount(row.digits))
          ),
        orElse: () => Effect.succeed(6)
      })
    )

    const audit = (scope: Scope, after: string, limit: number, since: Date) =>
      own(
        "auditing a page of tickets",
        Effect.flatMap(updatedAtPrecision, (digits) =>
          scan(
            scope,
            ", CASE WHEN t.`updated_at` >= ? THEN 1 ELSE 0 END",
            [datetime(atPrecision(since, digits))],
            after,
            limit
          )).pipe(Effect.map(({ end, ids, rows, through }) => ({
            ids,
            through,
            end,
            stale: rows.filter((row) => toCount(row[1]) === 0).map((row) => String(row[0]))
          })))
      )

    // Token values stay inside this function: only counts and ticket ids leave it.
    const duplicates = "SELECT `token` FROM `ticket` GROUP BY `token` HAVING COUNT(*) > 1"
    // On a connection of its own, like every other read: Ctrl-C during it ends its session on the server
    // rather than leaving the pool's close waiting behind it.
    const duplicateTokens = own(
      "looking for duplicate tokens",
      Effect.gen(function*() {
        const values = yield* sql.unsafe(`SELECT COUNT(*) FROM (${duplicates}) d`).values
        const count = toCount(values[0]?.[0])
        if (count === 0) return { values: 0, sample: [] }
        const tokens = (yield* sql.unsafe(`${duplicates} LIMIT 5`).values).map((row) => String(row[0]))
        const sample = yield* sql.unsafe(
          `SELECT \`id\` FROM \`ticket\` WHERE \`token\` IN (${
            tokens.map(() => "?").join(", ")
          }) ORDER BY \`id\` LIMIT 10`,
          tokens
        ).values
        return { values: count, sample: sample.map((row) => String(row[0])) }
      })
    )

    return TicketRepo.of({
      checkSchema: Effect.provideService(Effect.zipRight(schemaCheck, schemaWarnings), SqlClient.SqlClient, sql),
      page,
      rotate,
      canSpan: (scope) => Effect.map(rangesRefusable, (refusable) => refusable && scope.everyTicket),
      spans,
      rotateSpan,
      spanIds,
      count,
      idRange,
      audit,
      duplicateTokens,
      mayRotate: Effect.provideService(
        requireGrants(["UPDATE `ticket` SET `token` = `token`, `updated_at` = `updated_at` WHERE `id` = ''"]),
        SqlClient.SqlClient,
        sql
      )
    })
  })

/** The SQL implementation, on the app's SqlClient. */
export const layerSql: Layer.Layer<TicketRepo, never, SqlClient.SqlClient | Db> = Layer.effect(TicketRepo, makeSql())
