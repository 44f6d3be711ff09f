/**
 * The checkpoint store: run records and run locks, in Redis (REDIS_URL) or in a table of the database.
 *
 * Both adapters (`Checkpoint/Redis.ts`, `Checkpoint/Sql.ts`) implement a handful of atomic primitives
 * (`Store`); the run logic on top is written once, here.
 * Records are written only through a held lock and the write checks the lock in the same atomic step
 * (fencing), so a runner that lost its lock can never move another runner's checkpoint.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Ref from "effect/Ref"
import * as Schema from "effect/Schema"
import type { Scope as EffectScope } from "effect/Scope"
import { createHash, randomBytes } from "node:crypto"
import * as Fs from "node:fs"
import * as Os from "node:os"
import { makeRedisStore, redisClient, storeWarnings } from "./Checkpoint/Redis.js"
import { makeSqlStore } from "./Checkpoint/Sql.js"
import { redisPrefix, type RedisTarget, redisTarget } from "./Config.js"
import { Db, requireSchema, requireTable, stateColumns, stateTable } from "./Db.js"
import {
  type BadRedisUrl,
  type BadUsage,
  CheckpointCorrupt,
  CheckpointUnavailable,
  type DatabaseError,
  ForeignCheckpoint,
  type GrantMissing,
  LockHeld,
  LockHolder,
  LockLost,
  RedisRefused,
  RedisUnavailable,
  RunRecord,
  type SchemaMismatch,
  type SchemaMissing,
  Scope
} from "./Domain.js"

// Store primitives

export interface LockValue {
  readonly value: string
  /** Null when the entry never expires: this tool always sets a lease, so such an entry is damaged. */
  readonly expiresInMillis: number | null
}

/** Atomic operations a checkpoint backend provides. Keys are plain strings; values are JSON text. */
export interface Store {
  readonly name: string
  /**
   * What an operator should know before a run keeps its checkpoint here (a Redis that evicts keys, or that
   * needs no password although one is given).
   */
  readonly warnings?: ReadonlyArray<string>
  /** Where `key` is, as an operator would look it up (the Redis key with its prefix, the table row). */
  readonly locate: (key: string) => string
  /**
   * Fails unless the store takes a run's writes, asked without writing: `GrantMissing` (the table), or
   * `RedisRefused` (a Redis replica).
   */
  readonly mayWrite?: Effect.Effect<void, GrantMissing | RedisRefused | CheckpointUnavailable>
  /** `CheckpointCorrupt` when the key holds something that is not a string (another program's data). */
  readonly get: (key: string) => Effect.Effect<Option.Option<string>, CheckpointUnavailable | CheckpointCorrupt>
  readonly set: (key: string, value: string) => Effect.Effect<void, CheckpointUnavailable>
  /**
   * The keys `setFenced` wrote (the run records) that start with `prefix`: records are never deleted by the
   * tool, a handful per database.
   */
  readonly list: (prefix: string) => Effect.Effect<ReadonlyArray<string>, CheckpointUnavailable>
  /** Before a run's first write, once it holds its lock: whatever `list` needs written to go on finding runs. */
  readonly indexRuns?: Effect.Effect<void, CheckpointUnavailable>
  /** Sets `key` only while `lockKey` holds `holder`, atomically; false when it does not. */
  readonly setFenced: (
    key: string,
    value: string,
    lockKey: string,
    holder: string
  ) => Effect.Effect<boolean, CheckpointUnavailable>
  /** Takes `lockKey` for `ttl` if it is free or expired. */
  readonly acquire: (lockKey: string, holder: string, ttl: number) => Effect.Effect<boolean, CheckpointUnavailable>
  /** Replaces `expected` by `holder` on `lockKey`, atomically. */
  readonly swap: (
    lockKey: string,
    expected: string,
    holder: string,
    ttl: number
  ) => Effect.Effect<boolean, CheckpointUnavailable>
  /** Extends the lease while `holder` still holds the lock. */
  readonly renew: (lockKey: string, holder: string, ttl: number) => Effect.Effect<boolean, CheckpointUnavailable>
  readonly release: (lockKey: string, holder: string) => Effect.Effect<void, CheckpointUnavailable>
  /**
   * Takes `lockKey` back for `holder` after its lease ran out unrenewed (the store was unreachable), if no
   * one has taken it since and `key` still holds one of `expected` (the holder's own writes) or nothing (a
   * store restarted without its data), atomically.
   */
  readonly reclaim: (
    lockKey: string,
    holder: string,
    ttl: number,
    key: string,
    expected: ReadonlyArray<string>
  ) => Effect.Effect<boolean, CheckpointUnavailable>
  /** The live (unexpired) holder of a lock, or an entry without a lease (damaged). */
  readonly inspect: (lockKey: string) => Effect.Effect<Option.Option<LockValue>, CheckpointUnavailable>
}

// The service

/**
 * The process that takes locks: a lock of this host (the same boot of the same kernel, and PID namespace)
 * whose pid is gone is stale.
 */
export interface Host {
  readonly hostname: string
  /** Null where the system does not tell (not Linux): the host name alone then. */
  readonly pidNamespace: string | null
  /**
   * The kernel's id of this boot (Linux), null where the system does not tell. Two machines given the same
   * host name (cloned images) tell apart by it; their PID namespaces, outside containers, have one name.
   */
  readonly bootId: string | null
  readonly pid: number
  readonly isAlive: (pid: number) => boolean
}

const systemText = (read: () => string): string | null => {
  try {
    return read().trim()
  } catch {
    return null
  }
}

const systemHost: Host = {
  hostname: Os.hostname(),
  pidNamespace: systemText(() => Fs.readlinkSync("/proc/self/ns/pid")),
  bootId: systemText(() => Fs.readFileSync("/proc/sys/kernel/random/boot_id", "utf8")),
  pid: process.pid,
  isAlive: (pid) => {
    try {
      process.kill(pid, 0)
      return true
    } catch (error) {
      return (error as NodeJS.ErrnoException).code === "EPERM"
    }
  }
}

/** How long a lock lives without renewal (another host's crashed run blocks at most this long). */
export const leaseMillis = 30_000
const renewEvery = Duration.millis(leaseMillis / 3)
/** After a failed renewal (the store unreachable), try again this often while the lease lasts. */
const renewRetryEvery = Duration.seconds(1)

/** Identifies one run slot: a database and a scope. */
export interface RunKey {
  readonly database: string
  readonly scope: Scope
}

const hash = (text: string, length: number) => createHash("sha256").update(text).digest("hex").slice(0, length)

export const fingerprint = (key: RunKey): string => hash(JSON.stringify([key.database, key.scope]), 16)
const scopeHash = (scope: Scope) => hash(JSON.stringify(scope), 12)
const databaseHash = (database: string) => hash(database, 12)

/** Points to the record of the run most recently started on a database. */
const latestKey = (database: string) => `latest:${databaseHash(database)}`

/** Every run record of a database starts so (a scope's hash follows). */
const recordPrefix = (database: string) => `run:${databaseHash(database)}:`

export const keys = (key: RunKey) => {
  const slot = `${databaseHash(key.database)}:${scopeHash(key.scope)}`
  return {
    record: `${recordPrefix(key.database)}${scopeHash(key.scope)}`,
    lock: `lock:${slot}`,
    latest: latestKey(key.database)
  }
}

export interface RunLock {
  readonly holder: LockHolder
  /** Writes the run record, only while this lock is held (else `LockLost`). */
  readonly save: (record: RunRecord) => Effect.Effect<void, CheckpointUnavailable | LockLost>
}

export interface HeldLock {
  readonly holder: LockHolder
  readonly expiresInMillis: number
  /** True when the holder is a process of this host that no longer runs. */
  readonly stale: boolean
  /** What is wrong with an entry this tool did not write (no lease, not a holder), or null. */
  readonly damage: string | null
  /** Where the entry is, as an operator would look it up. */
  readonly location: string
}

/**
 * Why a run may not take a lock that is there, or undefined when it may take it over: the holder's process
 * is gone (stale), or the entry is damaged and `replaceDamaged` (a restart, which abandons whatever is there).
 */
export const refusal = (
  held: HeldLock,
  scope: Scope,
  replaceDamaged: boolean
): LockHeld | CheckpointCorrupt | undefined => {
  if (held.damage === null) {
    return held.stale ? undefined : new LockHeld({ holder: held.holder, scope, expiresInMillis: held.expiresInMillis })
  }
  if (replaceDamaged) return undefined
  return new CheckpointCorrupt({
    key: held.location,
    detail: `${held.damage}, which no run of this tool leaves; if no run is going, delete it and rerun with --resume`,
    scope,
    entry: "run lock"
  })
}

export interface CheckpointService {
  /** Where checkpoints live, for messages. */
  readonly store: string
  /** What an operator should know before a run keeps its checkpoint here (`Store.warnings`). */
  readonly storeWarnings: ReadonlyArray<string>
  /** Fails with `GrantMissing` unless a run's writes to the store are allowed (`Store.mayWrite`). */
  readonly mayWrite: Effect.Effect<void, GrantMissing | RedisRefused | CheckpointUnavailable>
  /** The run record of a slot; `CheckpointCorrupt` when unreadable, `ForeignCheckpoint` when not this slot's. */
  readonly load: (
    key: RunKey
  ) => Effect.Effect<Option.Option<RunRecord>, CheckpointUnavailable | CheckpointCorrupt | ForeignCheckpoint>
  /** The record of the run most recently started on `database` (any scope). */
  readonly latest: (
    database: string
  ) => Effect.Effect<Option.Option<RunRecord>, CheckpointUnavailable | CheckpointCorrupt>
  /** The unfinished runs on `database`, of every scope. */
  readonly unfinished: (database: string) => Effect.Effect<Unfinished, CheckpointUnavailable>
  /**
   * Takes the slot's lock for the enclosing scope: renewed while held, released on close. A damaged lock
   * entry is `CheckpointCorrupt`, unless `replaceDamaged` (a restart, which abandons whatever is there).
   */
  readonly lock: (
    key: RunKey,
    replaceDamaged: boolean
  ) => Effect.Effect<RunLock, LockHeld | CheckpointCorrupt | CheckpointUnavailable, EffectScope>
  /** Who holds the slot's lock, if anyone. */
  readonly holder: (key: RunKey) => Effect.Effect<Option.Option<HeldLock>, CheckpointUnavailable>
}

export interface Unfinished {
  /** Oldest first. */
  readonly runs: ReadonlyArray<RunRecord>
  /** Records that cannot be read: any of them may be an unfinished run, which the operator should hear of. */
  readonly unreadable: ReadonlyArray<CheckpointCorrupt>
}

export class Checkpoint extends Context.Tag("Checkpoint")<Checkpoint, CheckpointService>() {}

/** The run of `scope`, or (without one) the run most recently started on `database`. */
export const runOf = (checkpoint: CheckpointService, database: string, scope: Option.Option<Scope>) =>
  Option.match(scope, {
    onNone: () => checkpoint.latest(database),
    onSome: (s) => checkpoint.load({ database, scope: s })
  })

const RecordJson = Schema.parseJson(RunRecord)
const HolderJson = Schema.parseJson(LockHolder)
const encodeRecord = Schema.encodeSync(RecordJson)
const encodeHolder = Schema.encodeSync(HolderJson)
const decodeHolder = Schema.decodeUnknownOption(HolderJson)

const decodeScope = Schema.decodeUnknownOption(Schema.parseJson(Schema.Struct({ scope: Scope })))

/**
 * The run record stored at `key` (found at `location`). When it cannot be read, the error names its scope
 * where that is certain (the one asked for, `known`, or one it still names that hashes to its key), so that
 * the restart it suggests is the command to type.
 */
const decodeRecord = (key: string, location: string, text: string, known?: Scope) => {
  const corrupt = (detail: string) => {
    const named = () => Option.map(decodeScope(text), (record) => record.scope)
    const scope = known ?? Option.getOrUndefined(Option.filter(named(), (s) => key.endsWith(`:${scopeHash(s)}`)))
    return new CheckpointCorrupt({ key: location, detail, scope })
  }
  return Schema.decodeUnknown(RecordJson)(text).pipe(
    Effect.mapError((error) => {
      const [first] = ParseResult.ArrayFormatter.formatErrorSync(error)
      const where = first === undefined || first.path.length === 0 ? "" : `${first.path.join(".")}: `
      return corrupt(`${where}${first?.message ?? "unreadable"}`)
    }),
    // The scope and database it says it covers must be those it was written for: a resume would otherwise
    // work on one scope while the record, `status` and `verify` speak of another.
    Effect.filterOrFail(
      (record) => record.fingerprint === fingerprint({ database: record.database, scope: record.scope }),
      () => corrupt("its scope or database does not match its fingerprint")
    )
  )
}

/** The pid of the stand-in for a lock entry that is not a holder (0: no process's). */
export const unknownHolderPid = 0

const unknownHolder = (value: string) =>
  new LockHolder({ host: "unknown", pid: unknownHolderPid, token: hash(value, 8), since: new Date(0) })

export const make = (store: Store, host: Host = systemHost): CheckpointService => {
  const load = (key: RunKey) =>
    Effect.gen(function*() {
      const k = keys(key).record
      const text = yield* store.get(k).pipe(
        Effect.catchTag("CheckpointCorrupt", (error) =>
          new CheckpointCorrupt({ key: error.key, detail: error.detail, scope: key.scope }))
      )
      if (Option.isNone(text)) {
        return Option.none()
      }
      const record = yield* decodeRecord(k, store.locate(k), text.value, key.scope)
      if (record.fingerprint !== fingerprint(key)) {
        return yield* new ForeignCheckpoint({ key: store.locate(k), run: record, scope: key.scope })
      }
      return Option.some(record)
    })

  const latest = (database: string) =>
    Effect.gen(function*() {
      const k = latestKey(database)
      const pointer = yield* store.get(k)
      if (Option.isNone(pointer)) return Option.none()
      // The pointer names a record of this database, which this tool never deletes: anything else is damage.
      const damaged = (detail: string) => new CheckpointCorrupt({ key: store.locate(k), detail })
      if (!pointer.value.startsWith(recordPrefix(database))) {
        return yield* damaged("it does not name a run of this database")
      }
      const text = yield* store.get(pointer.value)
      if (Option.isNone(text)) return yield* damaged(`the run it names, ${store.locate(pointer.value)}, is missing`)
      return Option.some(yield* decodeRecord(pointer.value, store.locate(pointer.value), text.value))
    })

  const unfinished = (database: string) =>
    Effect.gen(function*() {
      const runs: Array<RunRecord> = []
      const unreadable: Array<CheckpointCorrupt> = []
      for (const k of yield* store.list(recordPrefix(database))) {
        const record = yield* store.get(k).pipe(
          Effect.flatMap(Option.match({
            onNone: () => Effect.succeed(Option.none<RunRecord>()),
            onSome: (text) => Effect.asSome(decodeRecord(k, store.locate(k), text))
          })),
          Effect.catchTag("CheckpointCorrupt", (error) =>
            Effect.as(Effect.sync(() => unreadable.push(error)), Option.none()))
        )
        if (Option.isSome(record) && record.value.database === database && !record.value.finished) {
          runs.push(record.value)
        }
      }
      runs.sort((a, b) =>
        a.startedAt.getTime() - b.startedAt.getTime()
      )
      return { runs, unreadable } satisfies Unfinished
    })

  const inspectHolder = (lockKey: string) =>
    Effect.map(
      store.inspect(lockKey),
      Option.map((held) => {
        const decoded = decodeHolder(held.value)
        const holder = Option.getOrElse(decoded, () => unknownHolder(held.value))
        const damage = Option.isNone(decoded)
          ? "a run lock whose value is not a lock holder"
          : held.expiresInMillis === null
          ? "a run lock without a lease"
          : null
        return {
          value: held.value,
          held: {
            holder,
            expiresInMillis: held.expiresInMillis ?? 0,
            // Pids only say something within one PID namespace of one boot of one host: another container with
            // the same host name has its own (and its own pid 1), another machine with that name (or this one
            // before a reboot) its own boot id, so its lock lasts its lease. Our own pid there is an earlier
            // process that had it: nothing running holds it. (A lock of an earlier version names no boot: the
            // host name and PID namespace decide, as they did then.)
            stale: damage === null && holder.host === host.hostname && holder.pidNamespace === host.pidNamespace &&
              (holder.bootId === null || holder.bootId === host.bootId) &&
              (holder.pid === host.pid || !host.isAlive(holder.pid)),
            damage,
            location: store.locate(lockKey)
          } satisfies HeldLock
        }
      })
    )

  const lock = (key: RunKey, replaceDamaged: boolean) =>
    Effect.gen(function*() {
      const k = keys(key)
      const now = yield* Clock.currentTimeMillis
      const holder = new LockHolder({
        host: host.hostname,
        pidNamespace: host.pidNamespace,
        bootId: host.bootId,
        pid: host.pid,
        token: randomBytes(8).toString("hex"),
        since: new Date(now)
      })
      const value = encodeHolder(holder)
      const take = (attempt: number): Effect.Effect<void, LockHeld | CheckpointCorrupt | CheckpointUnavailable> =>
        Effect.gen(function*() {
          if (yield* store.acquire(k.lock, value, leaseMillis)) return
          const current = yield* inspectHolder(k.lock)
          if (Option.isSome(current)) {
            const { held, value: found } = current.value
            const refused = refusal(held, key.scope, replaceDamaged)
            if (refused !== undefined) return yield* refused
            if (yield* store.swap(k.lock, found, value, leaseMillis)) return
          }
          // Released, expired or taken over between the calls: look again, a few times.
          if (attempt < 5) return yield* take(attempt + 1)
          return yield* new CheckpointUnavailable({
            store: store.name,
            operation: "taking the lock",
            detail: "the lock kept changing hands while being taken",
            transient: true
          })
        })
      // The release first, then the taking, interruptible: a lock store that does not answer (a locked
      // checkpoint table) must not hold up a timeout or a Ctrl-C. A release deletes only this run's own
      // entry (`value` is new to this run), so it is harmless when the lock was never taken; it gets 3 s
      // (a lock left behind is stale at once on this host, and lapses with its lease elsewhere).
      yield* Effect.addFinalizer(() =>
        store.release(k.lock, value).pipe(Effect.interruptible, Effect.timeout("3 seconds"), Effect.ignore)
      )
      yield* take(1)
      if (store.indexRuns !== undefined) yield* store.indexRuns
      const pointed = yield* Ref.make(false)
      // What the record may hold from this run: its last acknowledged save, and every save since whose answer
      // was lost (a timed-out write may still have been applied).
      const written = yield* Ref.make<ReadonlyArray<string>>([])
      // The lease ran out while the store was unreachable, or the store lost its data (restarted without
      // it, keys deleted): take the lock back unless another runner has been there, which would have written
      // the record.
      const reclaim = Effect.gen(function*() {
        if (!(yield* store.reclaim(k.lock, value, leaseMillis, k.record, yield* Ref.get(written)))) return false
        yield* Ref.set(pointed, false)
        yield* Effect.logWarning(
          `the run's lock was gone from ${store.name} (its lease ran out while the store was unreachable, or the ` +
            `store lost its data) and no other runner had taken it or written the run: taken back`
        )
        return true
      })
      // A failed renewal is tried again every second; the run itself learns of a lost lock at its next save.
      const renewed = store.renew(k.lock, value, leaseMillis).pipe(
        Effect.flatMap((held) => held ? Effect.succeed(true) : reclaim),
        Effect.catchAll((error) =>
          Effect.as(Effect.logDebug(`renewing the run's lock failed: ${error.message}`), false)
        )
      )
      // Every 10 s while renewals work; every second after one failed, so that a store back from an outage
      // sees the lease renewed before it runs out.
      const renewing = (ok: boolean): Effect.Effect<never> =>
        Effect.sleep(ok ? renewEvery : renewRetryEvery).pipe(Effect.zipRight(renewed), Effect.flatMap(renewing))
      yield* Effect.forkScoped(renewing(true))
      const save = (record: RunRecord) =>
        Effect.gen(function*() {
          const text = encodeRecord(record)
          yield* Ref.update(written, (texts) => texts.includes(text) ? texts : [...texts, text])
          const fenced = store.setFenced(k.record, text, k.lock, value)
          // A refused write takes the lapsed lock back, or finds that the renewal has just done so (and then
          // this reclaim is refused): either way the second fenced write says whether the lock is ours.
          const saved = (yield* fenced) || (yield* Effect.zipRight(reclaim, fenced))
          if (!saved) {
            return yield* new LockLost({ detail: `another process has taken ${k.lock} or written the run since` })
          }
          yield* Ref.set(written, [text])
          if (!(yield* Ref.get(pointed))) {
            yield* store.set(k.latest, k.record)
            yield* Ref.set(pointed, true)
          }
        })
      return { holder, save } satisfies RunLock
    })

  const holder = (key: RunKey) => Effect.map(inspectHolder(keys(key).lock), Option.map((h) => h.held))

  return {
    store: store.name,
    storeWarnings: store.warnings ?? [],
    mayWrite: store.mayWrite ?? Effect.void,
    load,
    latest,
    unfinished,
    lock,
    holder
  }
}

export const layerRedis = (
  target: RedisTarget,
  prefix: string
): Layer.Layer<Checkpoint, RedisUnavailable | RedisRefused> =>
  Layer.scoped(
    Checkpoint,
    Effect.gen(function*() {
      const client = yield* redisClient(target)
      return make(makeRedisStore(client, target, prefix, yield* storeWarnings(client, target)))
    })
  )

export const layerSql: Layer.Layer<
  Checkpoint,
  SchemaMissing | SchemaMismatch | DatabaseError,
  SqlClient.SqlClient | Db
> = Layer.effect(
  Checkpoint,
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const db = yield* Db
    // Against the app's own database, never migrated by us: say so now, not as a store outage mid-run; and
    // a database without the app's tables, or with tables that are not the app's, as that, whatever
    // `migrate` would add. Otherwise the app's tables are the command's to check (in time, saying so when
    // one is locked): not here, where nothing could be said.
    yield* requireTable(
      stateTable,
      stateColumns,
      `table ${stateTable} (where checkpoints live when REDIS_URL is unset) does not exist in ${db.display}`
    ).pipe(Effect.catchTag("SchemaMissing", (missing) => Effect.zipRight(requireSchema, Effect.fail(missing))))
    return make(yield* makeSqlStore(sql, db.display))
  })
)

/** Redis when REDIS_URL is set, else the checkpoint table of the database. */
export const layer: Layer.Layer<
  Checkpoint,
  BadRedisUrl | BadUsage | RedisUnavailable | RedisRefused | SchemaMissing | SchemaMismatch | DatabaseError,
  SqlClient.SqlClient | Db
> = Layer.unwrapEffect(
  Effect.gen(function*() {
    const target = yield* redisTarget
    type Chosen = Layer.Layer<
      Checkpoint,
      RedisUnavailable | RedisRefused | SchemaMissing | SchemaMismatch | DatabaseError,
      SqlClient.SqlClient | Db
    >
    if (Option.isNone(target)) return layerSql as Chosen
    return layerRedis(target.value, yield* redisPrefix) as Chosen
  })
)
