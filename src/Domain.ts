/**
 * The vocabulary shared by every module: the scope of a run, the run record kept in the checkpoint
 * store, and every failure a user can meet, each with the one line it is rendered as and its exit code.
 */
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Predicate from "effect/Predicate"
import * as Schedule from "effect/Schedule"
import * as ScheduleDecision from "effect/ScheduleDecision"
import * as Schema from "effect/Schema"

/** Which tickets a run rotates. Dates are ISO-8601 instants; `createdAfter` inclusive, `createdBefore` exclusive. */
export class Scope extends Schema.Class<Scope>("Scope")({
  liveOnly: Schema.Boolean,
  emailDomain: Schema.NullOr(Schema.String),
  createdAfter: Schema.NullOr(Schema.String),
  createdBefore: Schema.NullOr(Schema.String)
}) {
  static readonly all = new Scope({ liveOnly: false, emailDomain: null, createdAfter: null, createdBefore: null })

  /** The flags that select this scope, as an operator would type them. */
  get flags(): string {
    return [
      this.liveOnly ? "--live-only" : "",
      this.emailDomain === null ? "" : `--email-domain ${this.emailDomain}`,
      this.createdAfter === null ? "" : `--created-after ${this.createdAfter}`,
      this.createdBefore === null ? "" : `--created-before ${this.createdBefore}`
    ].filter((flag) => flag !== "").join(" ")
  }

  /** No conditions: every ticket of the table. */
  get everyTicket(): boolean {
    return this.flags === ""
  }

  get description(): string {
    return this.everyTicket ? "all tickets" : this.flags
  }

  /** The command that continues an unfinished run of this scope. */
  get resumeCommand(): string {
    return this.regenerate("--resume")
  }

  /** The command that abandons whatever run this scope has and starts a new one. */
  get restartCommand(): string {
    return this.regenerate("--restart")
  }

  private regenerate(mode: string): string {
    return ["regenerate", mode, this.flags].filter((part) => part !== "").join(" ")
  }
}

export const RunStatus = Schema.Literal("running", "interrupted", "failed", "completed")
export type RunStatus = typeof RunStatus.Type

/** An id as the app writes it: 32 lowercase hex characters (a uuid without dashes). */
export const idPattern = /^[0-9a-f]{32}$/

const TicketId = Schema.String.pipe(Schema.pattern(idPattern, { message: () => "not a ticket id" }))

/** The committed ranges lie above the cursor, each in order and after the one before, or a resume would misstep. */
const rangesAboveCursor = (
  record: { readonly cursor: string; readonly done: ReadonlyArray<readonly [string, string]> }
): boolean => {
  let floor = record.cursor
  for (const [first, last] of record.done) {
    if (!(first > floor && first <= last)) return false
    floor = last
  }
  return true
}

/** One run as the checkpoint store keeps it. `cursor` is the low-water mark: every id ≤ cursor is done. */
export class RunRecord extends Schema.Class<RunRecord>("RunRecord")(
  Schema.Struct({
    version: Schema.Literal(1),
    runId: Schema.String,
    fingerprint: Schema.String,
    database: Schema.String,
    scope: Scope,
    batchSize: Schema.Int.pipe(Schema.positive()),
    /** "" before the first commit. */
    cursor: Schema.String.pipe(Schema.filter((cursor) => cursor === "" || idPattern.test(cursor), {
      message: () => "neither a ticket id (32 lowercase hex characters) nor empty (the start)"
    })),
    /** Id ranges (inclusive) committed beyond the cursor; a resume skips them. */
    done: Schema.Array(Schema.Tuple(TicketId, TicketId)),
    rotated: Schema.NonNegativeInt,
    batches: Schema.NonNegativeInt,
    retries: Schema.NonNegativeInt,
    total: Schema.NullOr(Schema.NonNegativeInt),
    /** Time spent running, over all resumptions (for the rate). */
    activeMillis: Schema.NonNegativeInt,
    startedAt: Schema.DateFromString,
    updatedAt: Schema.DateFromString,
    status: RunStatus,
    error: Schema.NullOr(Schema.String)
  }).pipe(Schema.filter(rangesAboveCursor, {
    message: () => "done: the committed ranges are not in order above the cursor"
  }))
) {
  get finished(): boolean {
    return this.status === "completed"
  }
}

/** Who holds a run lock: enough to tell a live holder from a dead one on the same host. */
export class LockHolder extends Schema.Class<LockHolder>("LockHolder")({
  host: Schema.String,
  /** The holder's PID namespace (Linux): containers sharing a host name have their own, and their own pid 1. */
  pidNamespace: Schema.optionalWith(Schema.NullOr(Schema.String), { default: () => null }),
  /** The holder's boot of its kernel (Linux): machines that share a host name have their own. */
  bootId: Schema.optionalWith(Schema.NullOr(Schema.String), { default: () => null }),
  pid: Schema.Int,
  token: Schema.String,
  since: Schema.DateFromString
}) {
  get description(): string {
    return `pid ${this.pid} on ${this.host} since ${this.since.toISOString()}`
  }
}

// Errors. `message` is the single line shown to the operator: what happened, why, what to do.

/** Bad flags or flag combinations. */
export class BadUsage extends Data.TaggedError("BadUsage")<{ readonly message: string }> {}

export class BadDatabaseUrl extends Data.TaggedError("BadDatabaseUrl")<{ readonly reason: string }> {
  override get message() {
    return `DATABASE_URL is malformed: ${this.reason}. Use mysql://user:password@host:3306/database or sqlite:<path>.`
  }
}

export class BadRedisUrl extends Data.TaggedError("BadRedisUrl")<{ readonly reason: string }> {
  override get message() {
    return `REDIS_URL is malformed: ${this.reason}. Use redis://[user:password@]host:6379[/db].`
  }
}

/** Where the URL of a server comes from (a replica's: REPLICA_URLS), for the advice of connection errors. */
export type UrlSetting = "DATABASE_URL" | "REPLICA_URLS"

export class DatabaseUnreachable extends Data.TaggedError("DatabaseUnreachable")<{
  readonly target: string
  readonly reason: string
  readonly setting: UrlSetting
  readonly cause?: unknown
}> {
  override get message() {
    const advice = this.target.startsWith("sqlite:")
      ? `Check the file path in ${this.setting}, and that the file and its folder may be read and written.`
      : `Check ${this.setting} and that the server is up.`
    return `cannot connect to the database at ${this.target}: ${this.reason}. ${advice}`
  }
}

/** The server answered, but refused the user of DATABASE_URL: the password, the user, the host it comes from. */
export class DatabaseRefused extends Data.TaggedError("DatabaseRefused")<{
  readonly target: string
  readonly reason: string
  /** Whether the connection was in plaintext: a user that requires TLS is refused so too. */
  readonly plaintext: boolean
  readonly setting: UrlSetting
  readonly cause?: unknown
}> {
  override get message() {
    const tls = this.plaintext ? " (over TLS, `?ssl-mode=REQUIRED`, if the user requires it)" : ""
    return `the database at ${this.target} refused the connection: ${this.reason}. Check the user name and ` +
      `password in ${this.setting}, and that this user may connect from this host${tls} and use the database; ` +
      "nothing was changed."
  }
}

/** DATABASE_URL names a database the server does not have. */
export class DatabaseMissing extends Data.TaggedError("DatabaseMissing")<{
  readonly target: string
  readonly database: string
  readonly setting: UrlSetting
}> {
  override get message() {
    const where = `there is no database \`${this.database}\` at ${this.target}`
    return this.setting === "REPLICA_URLS"
      ? `${where}: check its name in REPLICA_URLS (the database the replica copies).`
      : `${where}: check its name in DATABASE_URL, or create it (CREATE DATABASE) and run \`migrate\`.`
  }
}

export class UnsuitableServer extends Data.TaggedError("UnsuitableServer")<{
  readonly target: string
  readonly detail: string
}> {
  override get message() {
    return `the database server at ${this.target} is set up in a way this tool cannot work with: ${this.detail}`
  }
}

export class RedisUnavailable extends Data.TaggedError("RedisUnavailable")<{
  readonly target: string
  readonly reason: string
  readonly cause?: unknown
}> {
  override get message() {
    // A rediss:// URL to a server without TLS shows only as a handshake that never completes.
    const tls = this.target.startsWith("rediss:") ? " and speaks TLS (rediss://)" : ""
    return `Redis at ${this.target} is not reachable: ${this.reason}. Check REDIS_URL and that Redis is up${tls}; ` +
      `nothing was changed. Once it is back, rerun (with --resume if a run had started).`
  }
}

/** Redis answered, but refused what REDIS_URL asks: the password, the user, the database number. */
export class RedisRefused extends Data.TaggedError("RedisRefused")<{
  readonly target: string
  readonly reason: string
  readonly cause?: unknown
  /** What of REDIS_URL to check (by default its user, password and database number). */
  readonly check?: string
  /** What it refused (by default the connection). */
  readonly refused?: string
}> {
  override get message() {
    return `Redis at ${this.target} refused ${this.refused ?? "the connection"}: ${this.reason}. Check ` +
      `${this.check ?? "the user, password and database number"} in REDIS_URL; nothing was changed.`
  }
}

export class SchemaMissing extends Data.TaggedError("SchemaMissing")<{ readonly detail: string }> {
  override get message() {
    return `${this.detail}: run \`migrate\` first.`
  }
}

export class SchemaMismatch extends Data.TaggedError("SchemaMismatch")<{
  readonly detail: string
  /** What the operator may check (by default, that DATABASE_URL names the app's database). */
  readonly hint?: string
  /** What does not match, when it is the rows rather than the tables. */
  readonly what?: string
}> {
  override get message() {
    return `${this.what ?? "the database schema"} does not match the ticket app (${this.detail}): ${
      this.hint ?? "is DATABASE_URL the right database?"
    }`
  }
}

/** The database user may not make a write the command makes (found before it writes anything). */
export class GrantMissing extends Data.TaggedError("GrantMissing")<{
  readonly detail: string
  /** A SQLite file (or its folder) this user may not write, where the server would have a grant. */
  readonly file?: string
}> {
  override get message() {
    return this.file === undefined
      ? `the database user lacks a privilege this command needs: ${this.detail}. Grant it (see "Privileges" ` +
        `in the README) and rerun; nothing was changed.`
      : `the database file ${this.file} may not be written by this user (${this.detail}): let this user write ` +
        `it and its folder (where SQLite keeps its write-ahead log), and rerun; nothing was changed.`
  }
}

export class NoParents extends Data.TaggedError("NoParents")<{ readonly parent: "users" | "orders" }> {
  override get message() {
    return `no ${this.parent}: run \`seed ${this.parent}\` first`
  }
}

/**
 * The one retry policy for transient failures (deadlocks, lock wait timeouts, lost connections, a busy
 * SQLite file, a Redis hiccup, a colliding token): exponential from 100 ms, each delay capped at 5 s,
 * jittered, at most 10 retries (about 30 s of waiting in all).
 */
export const transientRetry = Schedule.exponential("100 millis", 2).pipe(
  Schedule.modifyDelay((delay) => Duration.min(delay, Duration.seconds(5))),
  Schedule.jittered,
  Schedule.intersect(Schedule.recurs(10))
)

/**
 * Retries `effect` on `transientRetry` while `retryable` says a failure is worth it. `onRetry` runs once
 * for every retry actually made — not for a failure that is not retried, nor for the one that exhausts the
 * schedule.
 */
export const retryTransient = <E, R2 = never>(
  retryable: (error: E) => boolean | Effect.Effect<boolean>,
  onRetry: (error: E) => Effect.Effect<void, never, R2> = () => Effect.void
) =>
<A, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R | R2> => {
  const schedule = transientRetry.pipe(
    Schedule.whileInputEffect((error: E) => {
      const verdict = retryable(error)
      return typeof verdict === "boolean" ? Effect.succeed(verdict) : verdict
    }),
    Schedule.passthrough,
    Schedule.onDecision((error, decision) => ScheduleDecision.isContinue(decision) ? onRetry(error) : Effect.void)
  )
  // The schedule is set up only once the first attempt has failed, and is handed that failure first: the
  // same retries as `Effect.retry(effect, schedule)`, without its cost on every call that succeeds at once
  // (every batch, in a run without faults).
  return Effect.catchAll(effect, (first) => {
    let replay = true
    const attempt = Effect.suspend(() => {
      if (!replay) return effect
      replay = false
      return Effect.fail(first)
    })
    return Effect.retry(attempt, schedule)
  })
}

/** A database statement failed. `transient` failures are retried by the pipeline. */
export class DatabaseError extends Data.TaggedError("DatabaseError")<{
  readonly operation: string
  readonly transient: boolean
  readonly detail: string
  readonly cause?: unknown
}> {
  override get message() {
    return `database error while ${this.operation}: ${this.detail}`
  }
}

/** A new token collided with an existing one (unique key); the batch is retried with fresh tokens. */
export class DuplicateToken extends Data.TaggedError("DuplicateToken")<{ readonly detail: string }> {
  override get message() {
    return `a generated token collided with an existing one: ${this.detail}`
  }
}

/**
 * A span could not be rotated as one range: it holds more tickets than when it was read (the site inserted
 * some), or the server refused the range statement. The caller rotates the span's tickets by key instead.
 */
export class SpanChanged extends Data.TaggedError("SpanChanged")<{ readonly detail: string }> {
  override get message() {
    return `the span could not be rotated as a range: ${this.detail}`
  }
}

/** A seeder stopped part way: the INSERTs that committed stay (each is all or nothing). */
export class SeedIncomplete extends Data.TaggedError("SeedIncomplete")<{
  readonly error: DatabaseError
  readonly table: "users" | "orders" | "tickets"
  readonly inserted: number
  readonly requested: number
}> {
  override get message() {
    const kept = this.inserted === 0
      ? "nothing was inserted"
      : `the ${this.inserted} ${this.table} inserted stay; to add the other ${this.requested - this.inserted}, run ` +
        `\`seed ${this.table} --count ${this.requested - this.inserted}\``
    return `${this.error.message}. Seeding stopped after ${this.inserted} of ${this.requested} ${this.table}: ${kept}.`
  }
}

/** A run stopped by a failure that its retries could not fix; the checkpoint stays at the last commit. */
export class RunFailed extends Data.TaggedError("RunFailed")<{
  readonly error: DatabaseError | DuplicateToken | SchemaMismatch
  readonly runId: string
  readonly rotated: number
  readonly cursor: string
  /** The command that resumes the run (with its scope flags). */
  readonly resume: string
}> {
  override get message() {
    const where = this.cursor === "" && this.rotated > 0
      ? `its first batch did not commit; the ${counted(this.rotated, "ticket")} rotated by batches after it are ` +
        `committed and recorded`
      : committedUpTo(this.cursor, this.rotated) + (this.cursor === "" ? "" : ` (${this.rotated} rotated in all)`)
    // The cause's message may end in a sentence mark of its own (a question).
    const cause = /[.?!]$/.test(this.error.message) ? this.error.message : `${this.error.message}.`
    return `${cause} Run ${this.runId} stopped: ${where}. Fix the cause, then resume with \`${this.resume}\`.`
  }
}

/** `n` and its noun: "1 ticket", "2 tickets". */
export const counted = (n: number, noun: string, plural = `${noun}s`): string => `${n} ${n === 1 ? noun : plural}`

/**
 * Where a stopped run's checkpoint stands, `cursor` being its low-water mark ("" before the first) and
 * `rotated` the tickets it has recorded in all.
 */
export const committedUpTo = (cursor: string, rotated: number): string =>
  cursor !== ""
    ? `every batch up to id ${cursor} is committed and recorded`
    : rotated === 0
    ? "no batch had committed yet"
    : "the checkpoint is still at the start (a batch committed beyond it is recorded and skipped on resume)"

/** The checkpoint store (Redis or the checkpoint table) failed. */
export class CheckpointUnavailable extends Data.TaggedError("CheckpointUnavailable")<{
  readonly store: string
  readonly operation: string
  readonly detail: string
  readonly transient: boolean
}> {
  /** What happened, without what to do about it (for a notice that it is tried again). */
  get problem() {
    return `the checkpoint store (${this.store}) is unavailable while ${this.operation}: ${this.detail}`
  }

  override get message() {
    return `${this.problem}. Nothing committed is lost: the checkpoint trails the table by at most the batches in flight, which a ` +
      `resume redoes. Once the store is back, rerun with --resume (without it if no run had started).`
  }
}

export class CheckpointCorrupt extends Data.TaggedError("CheckpointCorrupt")<{
  readonly key: string
  readonly detail: string
  /** The scope whose checkpoint it is, where that is known for certain. */
  readonly scope?: Scope | undefined
  /** What the entry is, when not the run record: its lock. */
  readonly entry?: "run lock"
}> {
  private restart(unknown = "(with the same scope flags)") {
    return this.scope === undefined ? `\`regenerate --restart\` ${unknown}` : `\`${this.scope.restartCommand}\``
  }

  override get message() {
    return `the ${this.entry ?? "checkpoint"} at ${this.key} cannot be read (${this.detail}): nothing was changed; ` +
      `inspect it, or run ${this.restart()} to abandon it and start a new run.`
  }

  /** Said of a record found beside the one asked for: it may be a run of another scope left unfinished. */
  get otherRunNote() {
    return `the checkpoint at ${this.key} cannot be read (${this.detail}), so whether it is an unfinished run of ` +
      `another scope is unknown: inspect it, or run ${this.restart("with that run's scope flags")} to abandon it`
  }
}

export class LockHeld extends Data.TaggedError("LockHeld")<{
  readonly holder: LockHolder
  readonly scope: Scope
  readonly expiresInMillis: number
}> {
  override get message() {
    const { host, pid } = this.holder
    return `another run on this database and scope (${this.scope.description}) is in progress: ` +
      `${this.holder.description}. Wait for it to end, or stop it (Ctrl-C in its terminal, or kill ${pid} on ` +
      `${host}); if that process is gone, its lock expires within ${Math.ceil(this.expiresInMillis / 1000)} s: ` +
      `then rerun with --resume.`
  }
}

export class LockLost extends Data.TaggedError("LockLost")<{ readonly detail: string }> {
  override get message() {
    return `this run lost its lock (${this.detail}) and stopped so that two runners never write the same ` +
      `checkpoint. Nothing committed is lost: check \`status\` for another runner, then rerun with --resume.`
  }
}

/** A run recorded as running may still be going in another process (or was killed): `status` tells which. */
const maybeGoing = (run: RunRecord) =>
  run.status === "running" ? " once it is no longer going (`status` shows whether it is)" : ""

/** A plain start while a run is unfinished: of the same scope, or (`asked` differs) of another scope. */
export class UnfinishedRun
  extends Data.TaggedError("UnfinishedRun")<{ readonly run: RunRecord; readonly asked: Scope }>
{
  override get message() {
    const run = this.run
    const what = `an unfinished run ${run.runId} (${run.status}, ${run.rotated} rotated, cursor ${run.cursor || "-"})`
    if (run.scope.flags === this.asked.flags) {
      return `${what} exists for ${run.scope.description}: pass --resume to continue it or --restart to abandon it ` +
        `and start over.`
    }
    return `${what} exists for another scope (${run.scope.description}): continue it with ` +
      `\`${run.scope.resumeCommand}\`${maybeGoing(run)}, or pass --restart to start a run for ` +
      `${this.asked.description} anyway (that run stays resumable).`
  }
}

export class NoRunToResume extends Data.TaggedError("NoRunToResume")<{ readonly scope: Scope }> {
  override get message() {
    return `there is no run to resume for ${this.scope.description}: run \`regenerate\` without --resume to start one.`
  }
}

export class ScopeMismatch
  extends Data.TaggedError("ScopeMismatch")<{ readonly run: RunRecord; readonly asked: Scope }>
{
  override get message() {
    return `the unfinished run ${this.run.runId} has scope "${this.run.scope.description}", not ` +
      `"${this.asked.description}": continue it with \`${this.run.scope.resumeCommand}\`${maybeGoing(this.run)}, ` +
      `or pass --restart ` +
      `(without --resume) to start a run for ${this.asked.description} (that run stays resumable).`
  }
}

export class ForeignCheckpoint extends Data.TaggedError("ForeignCheckpoint")<{
  readonly key: string
  readonly run: RunRecord
  /** The scope whose key it is under. */
  readonly scope: Scope
}> {
  override get message() {
    return `the checkpoint at ${this.key} belongs to another database or scope (${this.run.database}, ` +
      `${this.run.scope.description}): nothing was changed; run \`${this.scope.restartCommand}\` to replace it.`
  }
}

export class NoRun extends Data.TaggedError("NoRun")<{ readonly database: string; readonly scope: string | null }> {
  override get message() {
    const of = this.scope === null ? "" : ` with scope ${this.scope}`
    return `no run is recorded for ${this.database}${of}: start one with \`regenerate\`` +
      `${this.scope === null ? "" : " and the same scope flags (without them, verify checks the latest run)"}.`
  }
}

export class VerifyFailed extends Data.TaggedError("VerifyFailed")<{ readonly summary: string }> {
  override get message() {
    return `verify failed: ${this.summary}`
  }
}

export type AppError =
  | BadUsage
  | GrantMissing
  | BadDatabaseUrl
  | BadRedisUrl
  | DatabaseUnreachable
  | DatabaseRefused
  | DatabaseMissing
  | UnsuitableServer
  | RedisUnavailable
  | RedisRefused
  | SchemaMissing
  | SchemaMismatch
  | NoParents
  | SeedIncomplete
  | DatabaseError
  | DuplicateToken
  | RunFailed
  | CheckpointUnavailable
  | CheckpointCorrupt
  | LockHeld
  | LockLost
  | UnfinishedRun
  | NoRunToResume
  | ScopeMismatch
  | ForeignCheckpoint
  | NoRun
  | VerifyFailed

/** 2 when the operator must change what they asked for (flags, URLs, preconditions), 1 when a run failed. */
const exitCodes: Record<AppError["_tag"], 1 | 2> = {
  BadUsage: 2,
  GrantMissing: 2,
  BadDatabaseUrl: 2,
  BadRedisUrl: 2,
  SchemaMissing: 2,
  SchemaMismatch: 2,
  NoParents: 2,
  CheckpointCorrupt: 2,
  UnfinishedRun: 2,
  NoRunToResume: 2,
  ScopeMismatch: 2,
  ForeignCheckpoint: 2,
  NoRun: 2,
  DatabaseUnreachable: 1,
  DatabaseRefused: 2,
  DatabaseMissing: 2,
  UnsuitableServer: 2,
  RedisUnavailable: 1,
  RedisRefused: 2,
  DatabaseError: 1,
  SeedIncomplete: 1,
  DuplicateToken: 1,
  RunFailed: 1,
  CheckpointUnavailable: 1,
  LockHeld: 1,
  LockLost: 1,
  VerifyFailed: 1
}

export const exitCodeOf = (error: AppError): 1 | 2 => exitCodes[error._tag]

export const isAppError = (u: unknown): u is AppError =>
  Predicate.hasProperty(u, "_tag") && typeof u._tag === "string" && Object.hasOwn(exitCodes, u._tag)
