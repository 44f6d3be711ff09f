/**
 * The one database connection of the app, MySQL/MariaDB or SQLite behind the same `SqlClient`, and every
 * difference between the two dialects: connection, identity, error classification, bulk statements.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as SqlClient from "@effect/sql/SqlClient"
import type { Connection } from "@effect/sql/SqlConnection"
import type { SqlError } from "@effect/sql/SqlError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Predicate from "effect/Predicate"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { type DatabaseTarget, databaseTarget, type MysqlTarget, type Tls } from "./Config.js"
import {
  BadDatabaseUrl,
  DatabaseError,
  DatabaseMissing,
  DatabaseRefused,
  DatabaseUnreachable,
  DuplicateToken,
  GrantMissing,
  retryTransient,
  SchemaMismatch,
  SchemaMissing,
  UnsuitableServer,
  type UrlSetting
} from "./Domain.js"

export type Dialect = "mysql" | "sqlite"

export interface DbInfo {
  readonly dialect: Dialect
  /** Stable name of the database (server host, port and schema, or the file's real path): no secrets. */
  readonly identity: string
  /** What messages show for this database. */
  readonly display: string
}

export class Db extends Context.Tag("Db")<Db, DbInfo>() {}

export interface DbOptions {
  /** Pool size (MySQL); SQLite always has one connection. */
  readonly maxConnections: number
  /** Create the embedded SQLite file when it does not exist (`migrate` only: nothing else writes one). */
  readonly create?: boolean
}

const driverError = (error: unknown): Record<string, unknown> => {
  let cause: unknown = error
  // SqlError wraps the driver's error; connection failures wrap it once more.
  for (
    let depth = 0;
    depth < 3 && Predicate.hasProperty(cause, "cause") && !Predicate.hasProperty(cause, "code");
    depth++
  ) {
    cause = cause.cause
  }
  return Predicate.isRecord(cause) ? cause : {}
}

/** The driver's own words for an error, with quoted values (which may be tokens) removed. */
export const describe = (error: unknown): string => {
  const cause = driverError(error)
  const text = [cause.sqlMessage, cause.message, Predicate.hasProperty(error, "message") ? error.message : undefined]
    .find((s): s is string => typeof s === "string" && s !== "") ?? String(cause.code ?? "unknown error")
  const code = typeof cause.code === "string" && !text.includes(cause.code) ? ` (${cause.code})` : ""
  return text.replace(/Duplicate entry '[^']*'/g, "Duplicate entry").replace(/\s+/g, " ").trim().replace(/\.+$/, "") +
    code
}

const transientMysqlErrnos = new Set([
  1040, // too many connections
  1053, // server shutdown in progress
  1205, // lock wait timeout
  1213, // deadlock
  1317, // query interrupted (KILL QUERY)
  1927, // connection killed (MariaDB)
  2006, // server has gone away
  2013, // lost connection during query
  4031 // disconnected by the server for inactivity
])

const transientCodes = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ETIMEDOUT",
  "EPIPE",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EAI_AGAIN",
  "PROTOCOL_CONNECTION_LOST",
  "PROTOCOL_SEQUENCE_TIMEOUT",
  "SQLITE_BUSY",
  "SQLITE_BUSY_SNAPSHOT",
  "SQLITE_BUSY_RECOVERY",
  "SQLITE_LOCKED"
])

/** Refusals of the connection's user: no retry mends them, the URL or the grants must change. */
const refusedErrnos = new Set([
  1044, // access denied to the database
  1045, // access denied (user or password)
  1130, // host not allowed to connect
  1698, // access denied (authentication plugin)
  1820, // the password has expired: change it before anything else
  1862, // the password has expired, and the client may not change it
  3118, // the account is locked (MySQL)
  4151 // the account is locked (MariaDB)
])

/**
 * Refusals a fresh connection can meet mid-run (the password changed, the database was dropped) that the
 * driver marks fatal like a lost connection, but that no retry will mend.
 */
const permanentMysqlErrnos = new Set([
  ...refusedErrnos,
  1049, // unknown database
  1129 // host blocked after too many connection errors
])

/** Whether a driver error is worth retrying: lock conflicts, lost connections, a busy file. */
export const isTransient = (error: unknown): boolean => {
  const cause = driverError(error)
  if (permanentMysqlErrnos.has(cause.errno as number)) return false
  return cause.fatal === true || transientMysqlErrnos.has(cause.errno as number) ||
    transientCodes.has(cause.code as string)
}

const isDuplicateToken = (error: unknown): boolean => {
  const cause = driverError(error)
  const text = String(cause.sqlMessage ?? cause.message ?? "")
  // The key is `token` when the column was created unique, `ticket_token_<digest>_uniq` when a later Django
  // migration made it so.
  return (cause.errno === 1062 && /for key '(?:[^']*\.)?(?:token|ticket_token_[0-9a-f]{8}_uniq)'/.test(text)) ||
    (String(cause.code).startsWith("SQLITE_CONSTRAINT") && /\bticket\.token\b/.test(text))
}

/**
 * A connection the server killed or lost while a statement ran: worth a fresh connection even for the
 * client's first `SELECT 1`, where a refused or silent server is reported at once instead.
 */
const connectionLost = (error: unknown): boolean => {
  const cause = driverError(error)
  return [1317, 1927, 2013].includes(cause.errno as number) ||
    ["PROTOCOL_CONNECTION_LOST", "ECONNRESET"].includes(cause.code as string)
}

/** Maps a driver failure to the app's typed error, once, at the adapter boundary. */
export const databaseError = (operation: string) => (error: SqlError): DatabaseError =>
  new DatabaseError({ operation, transient: isTransient(error), detail: describe(error), cause: error })

/** Like `databaseError`, but a collision on the token's unique key becomes `DuplicateToken`. */
export const writeError = (operation: string) => (error: SqlError): DatabaseError | DuplicateToken =>
  isDuplicateToken(error) ? new DuplicateToken({ detail: describe(error) }) : databaseError(operation)(error)

/** Rows changed by a statement, from the driver's raw result (MySQL `affectedRows`, SQLite `changes`). */
export const affectedRows = (raw: unknown): number => {
  if (Predicate.hasProperty(raw, "affectedRows")) return Number(raw.affectedRows)
  if (Predicate.hasProperty(raw, "changes")) return Number(raw.changes)
  return 0
}

/** A COUNT(*) or similar integer; MySQL returns BIGINT as number or string. */
export const toCount = (value: unknown): number => {
  const n = typeof value === "bigint" ? Number(value) : Number(value ?? 0)
  return Number.isFinite(n) ? n : 0
}

/** mysql2's `ssl` option for the URL's ssl-mode and ssl-ca (the CA file read here, a bad path as bad input). */
const sslOptions = (tls: Tls) =>
  Effect.try({
    try: () => {
      if (tls.mode === "disabled") return undefined
      if (tls.mode === "required") return { rejectUnauthorized: false }
      const ca = tls.ca === undefined ? {} : { ca: Fs.readFileSync(tls.ca, "utf8") }
      return { ...ca, rejectUnauthorized: true, verifyIdentity: tls.mode === "verify-identity" }
    },
    catch: (error) =>
      new BadDatabaseUrl({
        reason: `the ssl-ca file ${tls.ca} cannot be read (${
          Predicate.hasProperty(error, "code") ? String(error.code) : String(error)
        })`
      })
  })

// Drivers load on demand: a MySQL run never loads better-sqlite3, and the embedded default never loads mysql2.
type SslOptions = Effect.Effect.Success<ReturnType<typeof sslOptions>>

/**
 * The client's first connection is made in an acquire step, which no interruption stops: against a server
 * that accepts but does not answer, a Ctrl-C would wait out the connect timeout. Disconnected, the command
 * ends at once and the attempt is left to finish (and be closed) in the background.
 */
const mysqlClient = (target: MysqlTarget, options: DbOptions, ssl: SslOptions) =>
  Effect.disconnect(
    Effect.flatMap(Effect.promise(() => import("@effect/sql-mysql2/MysqlClient")), (MysqlClient) =>
      MysqlClient.make({
        host: target.host,
        port: target.port,
        database: target.database,
        username: target.username,
        password: target.password,
        maxConnections: options.maxConnections,
        poolConfig: {
          connectTimeout: 5_000,
          // Datetimes stay strings, exactly as stored (microseconds included), in both dialects.
          dateStrings: true,
          timezone: "Z",
          charset: "utf8mb4",
          maxIdle: options.maxConnections,
          // Probe connections idle at the TCP level after 10 s, so that a dead peer is noticed in minutes rather
          // than after the system's two hours (unacknowledged data falls to the retransmission timeout).
          enableKeepAlive: true,
          keepAliveInitialDelay: 10_000,
          // Each distinct batch size is one prepared statement per connection; keep the server's count bounded.
          maxPreparedStatements: 64,
          ...(ssl === undefined ? {} : { ssl })
        }
      }))
  )

/** How long a SQLite statement may wait for another writer's lock before it fails as busy (and is retried). */
const sqliteBusyMillis = 100

/** `mkdir -p`, one level at a time: Node's recursive mode spins forever on some paths (under /proc). */
const makeDirectories = (dir: string): void => {
  if (Fs.existsSync(dir)) return
  makeDirectories(Path.dirname(dir))
  Fs.mkdirSync(dir)
}

const sqliteClient = (target: Extract<DatabaseTarget, { _tag: "sqlite" }>, options: DbOptions) =>
  Effect.gen(function*() {
    if (target.filename !== ":memory:" && !Fs.existsSync(target.filename)) {
      if (options.create !== true) {
        return yield* new SchemaMissing({ detail: `there is no database file ${target.filename}` })
      }
      yield* Effect.try({
        try: () => makeDirectories(Path.dirname(Path.resolve(target.filename))),
        catch: unreachable(target)
      })
    }
    const SqliteClient = yield* Effect.promise(() => import("@effect/sql-sqlite-node/SqliteClient"))
    // The driver opens the file in its constructor and throws (SQLITE_CANTOPEN for a directory, say),
    // which the client turns into a defect: here it is the file that cannot be opened, not a bug.
    const client = yield* SqliteClient.make({ filename: target.filename }).pipe(
      Effect.catchAllDefect((defect) => Effect.fail(unreachable(target)(defect)))
    )
    // The driver waits for another writer's lock synchronously, Node's event loop stopped — no signal seen,
    // no progress drawn — for up to 5 s by default, per statement; the batches in flight meet the lock one
    // after another, and a Ctrl-C went unseen until it was gone. A short wait here: a statement still locked
    // out fails as busy, and the retry schedule waits on asynchronously (measured in the test of this).
    yield* client.unsafe(`PRAGMA busy_timeout = ${sqliteBusyMillis}`).pipe(Effect.mapError(unreachable(target)))
    return client
  })

/** A failure to connect, with advice on `setting`, where the server's URL comes from. */
const unreachable = (target: DatabaseTarget, setting: UrlSetting = "DATABASE_URL") => (error: unknown) => {
  if (target._tag === "mysql") {
    const errno = driverError(error).errno as number
    if (errno === 1049) { // ER_BAD_DB_ERROR
      const display = target.display.replace(/\/[^/]*$/, "")
      return new DatabaseMissing({ target: display, database: target.database, setting })
    }
    if (refusedErrnos.has(errno)) {
      const plaintext = target.tls.mode === "disabled"
      return new DatabaseRefused({ target: target.display, reason: describe(error), plaintext, setting, cause: error })
    }
  }
  return new DatabaseUnreachable({ target: target.display, reason: describe(error), setting, cause: error })
}

const identityOf = (target: DatabaseTarget, sql: SqlClient.SqlClient) =>
  target._tag === "sqlite"
    ? Effect.succeed(`sqlite:${target.filename === ":memory:" ? ":memory:" : Fs.realpathSync(target.filename)}`)
    : sql<{ host: string; port: unknown; db: string; autocommit: unknown }>`
        SELECT @@hostname AS host, @@port AS port, DATABASE() AS db, @@SESSION.autocommit AS autocommit`.pipe(
      probe("naming the database", databaseError("naming the database")),
      retryingDatabase,
      Effect.provideService(SqlClient.SqlClient, sql),
      Effect.mapError((error) => unreachable(target)(error.cause ?? error)),
      Effect.flatMap(([row]) =>
        // Every statement here is its own transaction; with autocommit off (the server's setting or an
        // init_connect) no batch would ever commit while the checkpoint moved on.
        toCount(row?.autocommit) === 0
          ? new UnsuitableServer({
            target: target.display,
            detail: "sessions start with autocommit off (@@autocommit = 0, from the server's settings or " +
              "init_connect), so no batch would ever commit. Turn autocommit on for this user and retry."
          })
          : Effect.succeed(`mysql://${row?.host}:${toCount(row?.port)}/${row?.db}`)
      )
    )

const make = (options: DbOptions) =>
  Effect.gen(function*() {
    const target = yield* databaseTarget
    const client: SqlClient.SqlClient = target._tag === "mysql"
      ? yield* mysqlClient(target, options, yield* sslOptions(target.tls)).pipe(
        retryTransient(connectionLost),
        Effect.mapError(unreachable(target))
      )
      : yield* sqliteClient(target, options)
    const identity = yield* identityOf(target, client)
    const info: DbInfo = { dialect: target._tag, identity, display: target.display }
    return Context.make(Db, info).pipe(Context.add(SqlClient.SqlClient, client))
  })

/**
 * A client of one connection to a replica of REPLICA_URLS (whose lag a run watches), closed with the
 * enclosing scope; failing to connect as connecting to DATABASE_URL does, the advice naming REPLICA_URLS.
 */
export const connectToReplica = (target: MysqlTarget) =>
  Effect.flatMap(sslOptions(target.tls), (ssl) =>
    mysqlClient(target, { maxConnections: 1 }, ssl).pipe(
      retryTransient(connectionLost),
      Effect.mapError(unreachable(target, "REPLICA_URLS")),
      Effect.provide(Reactivity.layer)
    ))

/** The SqlClient for DATABASE_URL (embedded SQLite when unset) and its `Db` description. */
export const layer = (
  options: DbOptions
): Layer.Layer<
  Db | SqlClient.SqlClient,
  BadDatabaseUrl | DatabaseUnreachable | DatabaseRefused | DatabaseMissing | UnsuitableServer | SchemaMissing
> => Layer.scopedContext(make(options)).pipe(Layer.provide(Reactivity.layer))

/**
 * How long the tool's own statements wait for a row lock, in seconds (the server's setting when lower).
 * A batch waiting on a lock the site holds keeps its own rows locked meanwhile, and the batches beside it
 * queue behind it (each range also locks the first row of the next): thousands of tickets the site could
 * not update for as long as the wait. InnoDB's default is 50 s; after this one the batch is rolled back,
 * releasing its rows, and retried with backoff.
 */
export const lockWaitSeconds = 5

const sessionsSetUp = new WeakSet<object>()

/**
 * The session settings of the tool's own connections: the short lock wait above, and strict SQL mode for
 * every table engine (`STRICT_ALL_TABLES` added to the server's mode), so that a value a column refuses is
 * an error whatever the server's default — the range UPDATE leans on that to refuse a span the site
 * inserted into (a token past the last one is NULL) instead of writing an empty token.
 */
export const sessionSetup = "SET SESSION innodb_lock_wait_timeout = " +
  `LEAST(@@SESSION.innodb_lock_wait_timeout, ${lockWaitSeconds}), ` +
  "sql_mode = IF(FIND_IN_SET('STRICT_ALL_TABLES', @@SESSION.sql_mode) > 0, @@SESSION.sql_mode, " +
  "CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES'))"

/**
 * A pooled connection reserved for `use`, with the driver's own connection (@effect/sql-mysql2 keeps it as
 * `conn`) and `close`, which closes it. If `use` is interrupted (a statement timed out, the run ended), the
 * connection is closed instead of going back to the pool: it may be dead (a server or a network that stopped
 * answering) or still busy with the abandoned statement, and the pool would hand it to the next statement,
 * which would wait behind it for ever.
 */
const reserved = <A, E, R>(
  use: (connection: Connection, driver: object | undefined, close: Effect.Effect<void>) => Effect.Effect<A, E, R>
): Effect.Effect<A, E | SqlError, R | SqlClient.SqlClient> =>
  Effect.scoped(Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const connection = yield* sql.reserve
    const driver = Predicate.hasProperty(connection, "conn") && Predicate.isObject(connection.conn)
      ? connection.conn
      : undefined
    const close = Effect.sync(() => {
      // Out of the pool (mysql2's destroy), and the socket torn down: destroy only half-closes it, and a socket
      // whose peer never answers would keep the process from exiting for many minutes.
      if (Predicate.hasProperty(driver, "destroy") && Predicate.isFunction(driver.destroy)) driver.destroy()
      const stream = Predicate.hasProperty(driver, "stream") ? driver.stream : undefined
      if (Predicate.hasProperty(stream, "destroy") && Predicate.isFunction(stream.destroy)) stream.destroy()
    })
    return yield* Effect.onInterrupt(use(connection, driver, close), () => close)
  }))

/**
 * Ends the server's session `thread` (`KILL CONNECTION`): its statement, and any transaction it holds open
 * with its row locks, which a client that cannot reach it any more would leave there for hours. On a
 * connection of its own, waiting 5 s at most: when the server has stopped answering, the pool may have no
 * connection to spare (the hung statements hold them) and the one it gives may be dead too. What is still
 * under way then goes on in the background.
 */
const killSession = (thread: number) =>
  reserved((connection) => connection.executeUnprepared(`KILL CONNECTION ${thread}`, [], undefined)).pipe(
    Effect.disconnect,
    // Interruptible although it runs as a finalizer, so that the timeout can end it.
    Effect.interruptible,
    Effect.timeout("5 seconds"),
    Effect.ignore
  )

/**
 * `effect`'s statements in the session of `connection`: set up with the settings above, once per session;
 * and if `effect` is interrupted, the session is ended on the server (see `killSession`).
 */
const inSession = <A, E, R>(connection: Connection, driver: object | undefined, effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    // The driver's connection identifies the session across reservations; its thread id names it on the server.
    if (driver === undefined || !sessionsSetUp.has(driver)) {
      yield* connection.executeUnprepared(sessionSetup, [], undefined)
      if (driver !== undefined) sessionsSetUp.add(driver)
    }
    const thread = Predicate.hasProperty(driver, "threadId") ? Number(driver.threadId) : NaN
    return yield* effect.pipe(
      Effect.provideService(SqlClient.TransactionConnection, [connection, 0] as const),
      Effect.onInterrupt(() => Number.isSafeInteger(thread) && thread > 0 ? killSession(thread) : Effect.void)
    )
  })

/**
 * Runs `effect`'s statements on a pooled connection of their own (MySQL; SQLite has one connection and
 * nothing to do), in a session with the settings above; if `effect` is interrupted — the run ends while the
 * count still runs, a statement timed out — its session is ended on the server instead of running its
 * statement to the end (which holds the pool open at exit and, for a write, its row locks), and the
 * connection is closed (see `reserved`).
 */
export const onOwnConnection = (dialect: Dialect) =>
<A, E, R>(
  effect: Effect.Effect<A, E, R>
): Effect.Effect<A, E | SqlError, R | SqlClient.SqlClient> =>
  dialect === "sqlite" ? effect : reserved((connection, driver) => inSession(connection, driver, effect))

/**
 * `effect` as one transaction on a connection of its own (see `onOwnConnection`), begun and committed by
 * plain statements (not prepared: MySQL refuses START TRANSACTION as a prepared statement). A failure rolls
 * it back, and if even the ROLLBACK fails the connection is closed rather than pooled with the transaction
 * open; an interruption closes it too, which rolls the transaction back on the server (`sql.withTransaction`
 * would send a ROLLBACK that nothing can interrupt, and on a connection that stopped answering it would wait
 * for ever). SQLite: `sql.withTransaction`.
 */
export const inOwnTransaction = (dialect: Dialect) =>
<A, E, R>(
  effect: Effect.Effect<A, E, R>
): Effect.Effect<A, E | SqlError, R | SqlClient.SqlClient> =>
  dialect === "sqlite"
    ? Effect.flatMap(SqlClient.SqlClient, (sql) => sql.withTransaction(effect))
    : reserved((connection, driver, close) => {
      const statement = (text: string) => connection.executeUnprepared(text, [], undefined)
      return inSession(
        connection,
        driver,
        Effect.gen(function*() {
          yield* statement("START TRANSACTION")
          const result = yield* effect
          yield* statement("COMMIT")
          return result
        }).pipe(
          Effect.catchAllCause((cause) =>
            statement("ROLLBACK").pipe(Effect.catchAll(() => close), Effect.zipRight(Effect.failCause(cause)))
          )
        )
      )
    })

/**
 * How long a page read or a batch UPDATE may go unanswered before it counts as a lost connection (see
 * `answeredWithin`). Without a limit, a half-open TCP connection or a frozen server would hang a run for
 * hours while its lock is renewed. Well above the tool's lock wait (`lockWaitSeconds`), which answers for
 * itself.
 */
export const defaultStatementTimeout = Duration.minutes(2)

/**
 * `effect` (a statement on a connection of its own: see `onOwnConnection`) failing as a transient lost
 * connection when it gets no answer within `timeout`; it is interrupted meanwhile, so killed on the server
 * and its connection closed. `why` says what may keep the answer away.
 */
export const answeredWithin =
  (timeout: Duration.Duration, operation: string, why?: string) => <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    Effect.timeoutFail(effect, {
      duration: timeout,
      onTimeout: () =>
        new DatabaseError({
          operation,
          transient: true,
          detail: `no answer within ${Duration.format(timeout)}${why === undefined ? "" : ` (${why})`}`
        })
    })

/**
 * How long one of the tool's short statements may go unanswered (a schema check, the server's identity, a
 * call to the checkpoint table): then it counts as a lost connection, tried again, its statement killed and
 * its connection closed. Well above the tool's lock wait (`lockWaitSeconds`).
 */
export const probeTimeout = Duration.seconds(10)

/** The dialect of `sql`. */
export const dialectOf = (sql: SqlClient.SqlClient): Dialect =>
  sql.onDialectOrElse({ mysql: (): Dialect => "mysql", orElse: (): Dialect => "sqlite" })

/**
 * `effect`, a short statement before the work, on a connection of its own (see `onOwnConnection`) and
 * answered within `probeTimeout` (`why` says what may keep the answer away); a driver failure becomes
 * `failure`'s error. One attempt: see `retryingDatabase`.
 */
export const probe = <E>(operation: string, failure: (error: SqlError) => E, why?: string) =>
<A>(
  effect: Effect.Effect<A, SqlError, SqlClient.SqlClient>
): Effect.Effect<A, E | DatabaseError, SqlClient.SqlClient> =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => onOwnConnection(dialectOf(sql))(effect)).pipe(
    Effect.mapError(failure),
    answeredWithin(probeTimeout, operation, why)
  )

/** ER_TABLEACCESS_DENIED_ERROR, ER_COLUMNACCESS_DENIED_ERROR: a statement the user's grants do not allow. */
const grantErrnos = new Set([1142, 1143])

/**
 * On SQLite, that this user may write the database file, asked of the file system: SQLite opens a file it
 * may not write read-only, and would fail at the first write. (Its write-ahead log, the `-wal` and `-shm`
 * files beside it, was opened with the connection: where this user may not write those, or the folder that
 * gets them, it did not connect.)
 */
const sqliteFileWritable = (sql: SqlClient.SqlClient): Effect.Effect<void, GrantMissing | DatabaseError> =>
  sql.unsafe<{ file: unknown }>("SELECT file FROM pragma_database_list WHERE name = 'main'").pipe(
    Effect.mapError(databaseError("checking the database file")),
    Effect.flatMap(([row]) => {
      const file = String(row?.file ?? "")
      if (file === "") return Effect.void
      try {
        Fs.accessSync(file, Fs.constants.W_OK)
        return Effect.void
      } catch (error) {
        return new GrantMissing({
          file,
          detail: Predicate.hasProperty(error, "code") ? String(error.code) : String(error)
        })
      }
    })
  )

/**
 * On MySQL, that the user may make the writes `statements`, found without making them: EXPLAIN needs the
 * privileges of the statement it explains. A missing grant then stops a command before it writes anything
 * (its dry run too), not at its first write. SQLite has no grants: there, that the file may be written. One
 * attempt: see `retryingDatabase`.
 */
export const requireGrants = (
  statements: ReadonlyArray<string>
): Effect.Effect<void, GrantMissing | DatabaseError, SqlClient.SqlClient> =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    dialectOf(sql) === "sqlite" ? sqliteFileWritable(sql) : Effect.forEach(
      statements,
      (statement) =>
        sql.unsafe(`EXPLAIN ${statement}`).pipe(
          probe("checking the user's privileges", (error): GrantMissing | DatabaseError =>
            grantErrnos.has(driverError(error).errno as number)
              ? new GrantMissing({ detail: describe(error) })
              : databaseError("checking the user's privileges")(error))
        ),
      { discard: true }
    ))

/** `effect` tried again, on the one retry schedule, while it fails with a transient `DatabaseError`. */
export const retryingDatabase = <A, E extends { readonly _tag: string }, R>(effect: Effect.Effect<A, E, R>) =>
  retryTransient((error: E) => error instanceof DatabaseError && error.transient)(effect)

/** One turn of Node's event loop: every timer, socket and fiber waiting on it moves on meanwhile. */
export const eventLoopTurn: Effect.Effect<void> = Effect.async<void>((resume) => {
  const handle = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(handle))
})

/**
 * Lets Node's event loop turn once on SQLite. Its calls are synchronous: without a turn between batches,
 * the progress ticker and the signal handlers (Ctrl-C) would wait until the whole job has ended.
 */
export const letEventLoopTurn = (dialect: Dialect): Effect.Effect<void> =>
  dialect === "sqlite" ? eventLoopTurn : Effect.void

/** A datetime as both dialects store it: UTC, `YYYY-MM-DD HH:MM:SS.ffffff` (what Django writes). */
export const datetime = (date: Date): string => date.toISOString().replace("T", " ").replace("Z", "000")

const appTables = {
  user: ["id", "created_at", "updated_at", "deleted_at", "password", "last_login", "first_name", "last_name", "email"],
  order: ["id", "created_at", "updated_at", "deleted_at", "name", "user_id"],
  ticket: ["id", "created_at", "updated_at", "deleted_at", "name", "token", "order_id"]
} as const

/** The checkpoint table (migration 0002), where checkpoints live when REDIS_URL is unset, and its columns. */
export const stateTable = "ticket_tokens_state"
export const stateColumns = ["key", "value", "expires_at"] as const

/** Every table `migrate` creates: the app's, and the checkpoint table. */
const migratedTables = { ...appTables, [stateTable]: stateColumns }
export const migratedTableNames = Object.keys(migratedTables)

/** What a missing app table means for a command. */
const noSchema = (table: string) => `the database has no ticket schema (table ${table} does not exist)`

/** Whether a statement failed because its table does not exist (MySQL/MariaDB and SQLite wording). */
export const missingTable = (error: unknown) => /doesn't exist|no such table/i.test(describe(error))
const missingColumn = (error: unknown) => /unknown column|no such column|has no column/i.test(describe(error))

/**
 * A table's metadata lock that a schema change waits for (queued behind the site's long transaction) holds
 * every later statement on the table, the tool's schema check included, for as long.
 */
const tableLockedWhy = "the server stopped answering, or the table is locked: a schema change waiting for " +
  "a long transaction, say; SHOW PROCESSLIST tells"

/**
 * Fails with `SchemaMissing` (saying `missing`, and to run `migrate`) when `table` does not exist, or
 * `SchemaMismatch` when it lacks one of `columns`. One attempt, bounded in time (see `probe`).
 */
const checkTable = (table: string, columns: ReadonlyArray<string>, missing: string, condition = "1 = 0") =>
  Effect.flatMap(
    SqlClient.SqlClient,
    (sql) =>
      sql.unsafe(`SELECT ${columns.map((c) => `\`${c}\``).join(", ")} FROM \`${table}\` WHERE ${condition}`).pipe(
        probe(
          `checking table ${table}`,
          (error): SchemaMissing | SchemaMismatch | DatabaseError =>
            missingTable(error)
              ? new SchemaMissing({ detail: missing })
              : missingColumn(error)
              ? new SchemaMismatch({ detail: `table ${table}: ${describe(error)}` })
              : databaseError(`checking table ${table}`)(error),
          tableLockedWhy
        ),
        Effect.asVoid
      )
  )

/** `checkTable`, a transient failure (a lost connection, no answer in time) tried again. */
export const requireTable = (
  table: string,
  columns: ReadonlyArray<string>,
  missing: string,
  condition?: string
): Effect.Effect<void, SchemaMissing | SchemaMismatch | DatabaseError, SqlClient.SqlClient> =>
  retryingDatabase(checkTable(table, columns, missing, condition))

/**
 * On MySQL, that `ticket.id` is text (the app's uuid as char(32)) and `ticket.token` holds a token's 32
 * characters: another id (an integer key) or a narrower token column would fail the first batch, once a
 * run had begun and recorded itself. (SQLite does not enforce a declared type.)
 */
const ticketColumnsFit = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql.onDialectOrElse({
    mysql: () =>
      sql<{ name: unknown; type: unknown; width: unknown }>`
        SELECT COLUMN_NAME AS name, DATA_TYPE AS type, CHARACTER_MAXIMUM_LENGTH AS width
        FROM information_schema.COLUMNS
        WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'ticket' AND COLUMN_NAME IN ('id', 'token')`.pipe(
        probe("checking table ticket", databaseError("checking table ticket")),
        Effect.flatMap((rows) => {
          const column = (name: string) => rows.find((row) => String(row.name).toLowerCase() === name)
          const id = column("id")
          const idType = String(id?.type ?? "").toLowerCase()
          if (id !== undefined && idType !== "char" && idType !== "varchar") {
            return new SchemaMismatch({
              detail: `table ticket: column id is ${idType}, not text: the tool knows tickets by the app's ` +
                "uuid ids (char(32))"
            })
          }
          const width = toCount(column("token")?.width)
          return width >= 32 ? Effect.void : new SchemaMismatch({
            detail: `table ticket: column token holds ${width === 0 ? "no text" : `${width} characters`}, ` +
              "fewer than a token's 32"
          })
        })
      ),
    orElse: () => Effect.void
  }))

/**
 * What a usable schema still warns of: a `ticket.token` without a unique index of its own (the app creates
 * one), so that the server would not refuse a duplicate token. Bounded in time (see `probe`).
 */
export const schemaWarnings: Effect.Effect<ReadonlyArray<string>, DatabaseError, SqlClient.SqlClient> = Effect
  .flatMap(SqlClient.SqlClient, (sql) =>
    sql.unsafe<{ n: unknown }>(sql.onDialectOrElse({
      mysql: () =>
        "SELECT COUNT(*) AS `n` FROM (SELECT `INDEX_NAME` FROM information_schema.`STATISTICS` " +
        "WHERE `TABLE_SCHEMA` = DATABASE() AND `TABLE_NAME` = 'ticket' AND `NON_UNIQUE` = 0 " +
        "GROUP BY `INDEX_NAME` HAVING COUNT(*) = 1 AND MAX(`COLUMN_NAME`) = 'token') u",
      orElse: () =>
        "SELECT COUNT(*) AS n FROM pragma_index_list('ticket') l WHERE l.\"unique\" = 1 AND l.partial = 0 " +
        "AND (SELECT COUNT(*) FROM pragma_index_info(l.name)) = 1 " +
        "AND (SELECT name FROM pragma_index_info(l.name)) = 'token'"
    })).pipe(
      probe("checking table ticket", databaseError("checking table ticket")),
      Effect.map(([row]) =>
        toCount(row?.n) > 0 ? [] : [
          "ticket.token has no unique index (the app creates one): the database would not refuse a duplicate " +
          "token; the new tokens are random (the 122 random bits of a v4 UUID each), and `verify` checks that " +
          "they are unique"
        ]
      )
    ))

/**
 * Fails with `SchemaMissing` (point to `migrate`) or `SchemaMismatch` unless the app's tables are usable.
 * One attempt, each statement bounded in time (see `probe`): the caller retries.
 */
export const schemaCheck: Effect.Effect<void, SchemaMissing | SchemaMismatch | DatabaseError, SqlClient.SqlClient> =
  Effect.zipRight(
    Effect.forEach(
      Object.entries(appTables),
      ([table, columns]) => checkTable(table, columns, noSchema(table)),
      { discard: true }
    ),
    ticketColumnsFit
  )

/** `schemaCheck`, a transient failure (a lost connection, no answer in time) tried again. */
export const requireSchema: Effect.Effect<void, SchemaMissing | SchemaMismatch | DatabaseError, SqlClient.SqlClient> =
  retryingDatabase(schemaCheck)

/**
 * Fails with `SchemaMissing` (point to `migrate`) unless the app's tables exist, asking the server's
 * catalogue (SQLite's schema table), not the tables: answered even while one is locked, by a schema change
 * queued behind a long transaction, say, which holds every statement on the table. For what reads the
 * checkpoint store alone (`status`). Bounded and retried like `requireSchema`.
 */
export const requireAppTables: Effect.Effect<void, SchemaMissing | DatabaseError, SqlClient.SqlClient> = Effect
  .flatMap(SqlClient.SqlClient, (sql) => {
    const names = Object.keys(appTables)
    const listed = names.map((name) => `'${name}'`).join(", ")
    return sql.unsafe<{ name: unknown }>(sql.onDialectOrElse({
      mysql: () =>
        "SELECT `TABLE_NAME` AS `name` FROM information_schema.`TABLES` " +
        `WHERE \`TABLE_SCHEMA\` = DATABASE() AND \`TABLE_NAME\` IN (${listed})`,
      orElse: () => `SELECT name FROM sqlite_master WHERE type = 'table' AND name IN (${listed})`
    })).pipe(
      probe("checking the schema", databaseError("checking the schema")),
      Effect.flatMap((rows) => {
        const missing = names.find((name) => !rows.some((row) => String(row.name) === name))
        return missing === undefined
          ? Effect.void
          : new SchemaMissing({ detail: noSchema(missing) })
      }),
      retryingDatabase
    )
  })

/**
 * The tables `migrate` creates that do not exist; fails with `SchemaMismatch` when one that exists is not
 * the app's (so that `migrate` writes nothing beside it).
 */
export const missingTables: Effect.Effect<
  ReadonlyArray<string>,
  SchemaMismatch | DatabaseError,
  SqlClient.SqlClient
> = Effect.map(
  Effect.forEach(Object.entries(migratedTables), ([table, columns]) =>
    // Worded unlike requireSchema's check on purpose: the SQLite client keeps a statement that failed to
    // prepare in its cache, failing, for minutes; `migrate` checks again once it has created the table.
    requireTable(table, columns, table, "0 = 1").pipe(
      Effect.as([]),
      Effect.catchTag("SchemaMissing", () => Effect.succeed([table]))
    )),
  (missing) => missing.flat()
)

const statementTexts = new Map<string, string>()

/** Statement text built once per shape (batch size, dialect): long placeholder lists are not rebuilt per batch. */
export const statementText = (key: string, build: () => string): string => {
  let text = statementTexts.get(key)
  if (text === undefined) {
    text = build()
    statementTexts.set(key, text)
  }
  return text
}
