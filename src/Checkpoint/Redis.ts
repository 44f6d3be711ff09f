/**
 * The checkpoint store in Redis (REDIS_URL): each `Store` primitive is one command or one Lua script, so
 * it is atomic; leases are Redis key expiries.
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type { Scope as EffectScope } from "effect/Scope"
import type { Redis } from "ioredis"
import type { Store } from "../Checkpoint.js"
import type { RedisTarget } from "../Config.js"
import { describe } from "../Db.js"
import { CheckpointCorrupt, CheckpointUnavailable, RedisRefused, RedisUnavailable } from "../Domain.js"

/**
 * Lua: the value of the lock key `KEYS[1]` as the lock scripts compare it — false when there is none, and
 * for a key of another type (another program's data) a text that no holder is, which a restart's swap can
 * name to replace it (`GET` would fail with WRONGTYPE, for a restart too).
 */
const lockValue = `local function held() local t = redis.call('TYPE', KEYS[1]).ok ` +
  `if t == 'string' then return redis.call('GET', KEYS[1]) elseif t == 'none' then return false end ` +
  `return 'a Redis ' .. t .. ', not a string' end `

const scripts = {
  // The key is also added to the index (`KEYS[3]`), a set that `list` reads instead of walking a keyspace
  // that a Redis shared with the site's cache fills (SCAN took 4.2 s over 5 million keys here). Added first:
  // a failure there writes nothing.
  setFenced: {
    numberOfKeys: 3,
    lua: `if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('SADD', KEYS[3], ARGV[3]) ` +
      `redis.call('SET', KEYS[1], ARGV[1]) return 1 else return 0 end`
  },
  swap: {
    numberOfKeys: 1,
    lua: lockValue +
      `if held() == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 else return 0 end`
  },
  renew: {
    numberOfKeys: 1,
    lua:
      `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end`
  },
  release: {
    numberOfKeys: 1,
    lua: `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`
  },
  reclaim: {
    numberOfKeys: 2,
    lua: `if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end local r = redis.call('GET', KEYS[2]) ` +
      `local ours = r == false for i = 3, #ARGV do if r == ARGV[i] then ours = true end end ` +
      `if ours then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end return 0`
  },
  inspect: {
    numberOfKeys: 1,
    lua: lockValue + `return {held(), redis.call('PTTL', KEYS[1])}`
  }
} as const

type ScriptClient = Redis & { [K in keyof typeof scripts]: (...args: Array<string | number>) => Promise<unknown> }

/**
 * ioredis tells of a password the server does not need on the console, a `[WARN]` line at each connect
 * (again at each reconnect while Redis comes and goes). Those lines are held back; the number seen tells a
 * connect that had one, for `storeWarnings` to say once, in the tool's words.
 */
let unneededPasswords = 0
const passwordNotNeeded = new WeakSet<Redis>()
let holdingBack = false
const holdBackPasswordWarnings = () => {
  if (holdingBack) return
  holdingBack = true
  const warn = console.warn
  console.warn = (...args: Array<unknown>) => {
    if (
      typeof args[0] === "string" &&
      /^\[WARN\] .*does not require a password, but a password was supplied/.test(args[0])
    ) {
      unneededPasswords++
    } else {
      warn.apply(console, args)
    }
  }
}

/**
 * A connected ioredis client that fails commands fast while Redis is away (the pipeline retries them),
 * closed with the enclosing scope. The connecting is interruptible: a Ctrl-C need not wait out a server
 * that does not answer.
 */
export const redisClient = (
  target: RedisTarget
): Effect.Effect<ScriptClient, RedisUnavailable | RedisRefused, EffectScope> =>
  Effect.gen(function*() {
    const client = yield* Effect.acquireRelease(
      Effect.promise(async () => {
        // Loaded on demand: without REDIS_URL the client is never needed.
        const { Redis } = await import("ioredis")
        const client = new Redis(Redacted.value(target.url), {
          lazyConnect: true,
          enableOfflineQueue: false,
          maxRetriesPerRequest: 0,
          connectTimeout: 3_000,
          commandTimeout: 3_000,
          retryStrategy: (times: number) => Math.min(times * 200, 1_000)
        })
        for (const [name, script] of Object.entries(scripts)) {
          client.defineCommand(name, { numberOfKeys: script.numberOfKeys, lua: script.lua })
        }
        return client as ScriptClient
      }),
      // QUIT where it can be answered (a connection ready), for at most 2 s; else the connection is dropped.
      (client) =>
        client.status === "ready"
          ? Effect.promise(() => client.quit().catch(() => client.disconnect())).pipe(
            Effect.timeoutTo({
              duration: "2 seconds",
              onSuccess: () => undefined,
              onTimeout: () => client.disconnect()
            })
          )
          : Effect.sync(() => client.disconnect())
    )
    // Errors surface through the failing commands. The one that explains a failed connect is the first that
    // is more than "no connection now" (which follows it, in an order that varies with the timing).
    let cause: unknown
    client.on("error", (error) => {
      if (cause === undefined || noConnection(cause)) cause = error
    })
    holdBackPasswordWarnings()
    const unneededBefore = unneededPasswords
    // Interruptible even where the caller is not (a layer being built): the scope closes the client.
    yield* Effect.interruptible(Effect.tryPromise({
      try: async () => {
        try {
          await client.connect()
          await client.ping()
          // ioredis reports a database index the server refuses only as an event and stays on 0: ask again,
          // so that the refusal fails the command instead of the checkpoints going to another database.
          if (client.options.db !== undefined && client.options.db !== 0) await client.select(client.options.db)
        } catch (error) {
          throw cause ?? error
        }
      },
      catch: (error) => {
        const fields = { target: target.display, reason: describeRedis(error), cause: error }
        // The server there is not a Redis (ioredis cannot parse its answer): REDIS_URL names the wrong port.
        if (error instanceof Error && error.name === "ParserError") {
          return new RedisRefused({ ...fields, check: "the host and port" })
        }
        // An answer that refuses (WRONGPASS, NOAUTH, a database number out of range) will not change by waiting.
        return isTransientRedis(error) ? new RedisUnavailable(fields) : new RedisRefused(fields)
      }
    }))
    // The AUTH's answer came before the PING's.
    if (unneededPasswords > unneededBefore) passwordNotNeeded.add(client)
    return client
  })

/** ioredis's words for a command refused for want of a connection. */
const noConnection = (error: unknown): boolean => /Stream isn't writeable|Connection is closed/.test(describe(error))

/**
 * A Redis failure in ioredis's words, but for two: "Stream isn't writeable" (the offline queue is off, so
 * commands fail fast while there is no connection), and its protocol error, which asks the user to report
 * it: the server on that port is not a Redis (an HTTP server answers "H").
 */
const describeRedis = (error: unknown): string =>
  describe(error)
    .replace(/Stream isn't writeable.*/, "not connected")
    .replace(/^Protocol error, got (".*") as reply type byte\. Please report this\.?$/, (_, first) =>
      `the server there is not a Redis (its answer began with ${first})`)

/**
 * Whether a Redis failure is worth retrying: no connection, a timeout, a server loading its data or busy
 * with a script. A refusal (authentication, permissions, a read-only replica, out of memory) is not.
 */
const isTransientRedis = (error: unknown): boolean =>
  !(error instanceof Error && error.name === "ReplyError") ||
  /^(LOADING|BUSY|TRYAGAIN|CLUSTERDOWN|MASTERDOWN)\b/.test(error.message)

/**
 * What an operator should know about a connected Redis before a run keeps its checkpoint there:
 * - that it needs no password although REDIS_URL gives one (anyone who reaches it may move the checkpoints);
 * - that it evicts any key once its memory is full (a cache's `allkeys-*` policy with a `maxmemory`): it may
 *   drop a run's record, and with it the resume. Best effort: not said where INFO is refused.
 */
export const storeWarnings = (client: Redis, target: RedisTarget): Effect.Effect<ReadonlyArray<string>> =>
  Effect.promise(async () => {
    const warnings: Array<string> = []
    if (passwordNotNeeded.has(client)) {
      warnings.push(
        `Redis at ${target.display} needs no password: the one REDIS_URL gives is not used (set one on the ` +
          `server with requirepass or an ACL user, or leave it out of REDIS_URL)`
      )
    }
    const info = await client.info("memory").catch(() => "")
    const field = (name: string) => new RegExp(`^${name}:(\\S*)`, "m").exec(info)?.[1]
    const policy = field("maxmemory_policy")
    if (policy !== undefined && policy.startsWith("allkeys-") && Number(field("maxmemory")) > 0) {
      warnings.push(
        `Redis at ${target.display} evicts any key when its memory is full (maxmemory-policy ${policy}): ` +
          `the checkpoint could be evicted and the run's resume lost; use a Redis that keeps its keys ` +
          `(noeviction or a volatile-* policy), or leave REDIS_URL unset to keep the checkpoint in the database`
      )
    }
    return warnings
  })

export const makeRedisStore = (
  client: ScriptClient,
  target: RedisTarget,
  prefix: string,
  warnings: ReadonlyArray<string> = []
): Store => {
  const name = `redis ${target.display}`
  const k = (key: string) => `${prefix}:${key}`
  const call = <A>(operation: string, f: () => Promise<A>) =>
    Effect.tryPromise({
      try: f,
      catch: (error) =>
        new CheckpointUnavailable({
          store: name,
          operation,
          detail: describeRedis(error),
          transient: isTransientRedis(error)
        })
    })
  const index = k("index")
  const locate = (key: string) => `redis key ${k(key)} on ${target.display}`
  /**
   * Without an index (no run recorded since the tool kept one): the keys under the prefix, by SCAN — in large
   * steps, not holding the server as KEYS would. (Runs an earlier version recorded are found so; before any
   * run, each listing walks the keyspace.)
   */
  const keysWritten = async () => {
    const found = new Set<string>()
    let cursor = "0"
    do {
      // The prefix's glob characters (the operator's REDIS_PREFIX may have some) match only themselves.
      const match = `${prefix.replace(/[*?[\]\\]/g, "\\$&")}:*`
      const [next, batch] = await client.scan(cursor, "MATCH", match, "COUNT", 10_000)
      for (const key of batch) if (key !== index) found.add(key.slice(prefix.length + 1))
      cursor = next
    } while (cursor !== "0")
    return [...found]
  }
  return {
    name,
    warnings,
    locate,
    // A replica takes no writes (or keeps them from its primary): the run would fail as it took its lock.
    // Not checked where ROLE is refused (an ACL user without it).
    mayWrite: Effect.promise(() => client.role().catch(() => undefined)).pipe(
      Effect.flatMap((role) =>
        Array.isArray(role) && role[0] !== "master"
          ? new RedisRefused({
            target: target.display,
            refused: "a run's writes",
            reason: role[0] === "slave"
              ? `it is a replica (of ${String(role[1])}:${String(role[2])}), which takes no writes`
              : `it is a ${String(role[0])}, not a primary`,
            check: "the host and port (the primary's)"
          })
          : Effect.void
      )
    ),
    get: (key) =>
      call("reading", () => client.get(k(key))).pipe(
        Effect.map(Option.fromNullable),
        Effect.catchIf(
          (error) => error.detail.startsWith("WRONGTYPE"),
          () => new CheckpointCorrupt({ key: locate(key), detail: "not a string value" })
        )
      ),
    set: (key, value) => Effect.asVoid(call("writing", () => client.set(k(key), value))),
    list: (start) =>
      call("listing runs", async () => {
        const written = await client.exists(index) === 1 ? await client.smembers(index) : await keysWritten()
        return written.filter((key) => key.startsWith(start))
      }),
    // Before the index's first member (a run's fenced write adds its record): what an earlier version wrote
    // goes in too, or listings would no longer find it. Only a run writes so; a listing only reads.
    indexRuns: call("indexing the runs", async () => {
      if (await client.exists(index) === 1) return
      const found = await keysWritten()
      if (found.length > 0) await client.sadd(index, ...found)
    }),
    setFenced: (key, value, lockKey, holder) =>
      call("writing the checkpoint", () => client.setFenced(k(key), k(lockKey), index, value, holder, key)).pipe(
        Effect.mapError((error) =>
          error.detail.includes("WRONGTYPE")
            ? new CheckpointUnavailable({
              store: error.store,
              operation: error.operation,
              transient: false,
              detail: `${locate("index")} is not a set (another program's data under the tool's prefix?): ` +
                `rename or delete it`
            })
            : error
        ),
        Effect.map((n) => n === 1)
      ),
    acquire: (lockKey, holder, ttl) =>
      call("taking the lock", () => client.set(k(lockKey), holder, "PX", ttl, "NX")).pipe(
        Effect.map((reply) => reply === "OK")
      ),
    swap: (lockKey, expected, holder, ttl) =>
      call("taking over a stale lock", () => client.swap(k(lockKey), expected, holder, ttl)).pipe(
        Effect.map((n) => n === 1)
      ),
    renew: (lockKey, holder, ttl) =>
      call("renewing the lock", () => client.renew(k(lockKey), holder, ttl)).pipe(Effect.map((n) => n === 1)),
    release: (lockKey, holder) => Effect.asVoid(call("releasing the lock", () => client.release(k(lockKey), holder))),
    reclaim: (lockKey, holder, ttl, key, expected) =>
      call("taking the lock back", () => client.reclaim(k(lockKey), k(key), holder, ttl, ...expected)).pipe(
        Effect.map((n) => n === 1)
      ),
    inspect: (lockKey) =>
      call("reading the lock", () => client.inspect(k(lockKey))).pipe(
        Effect.map((reply) => {
          const [value, ttl] = reply as [string | null, number]
          // PTTL -1: a key without expiry.
          return value === null
            ? Option.none()
            : Option.some({ value, expiresInMillis: ttl === -1 ? null : Math.max(0, ttl) })
        })
      )
  }
}
