/**
 * The checkpoint store in memory: the same `Store` primitives as Redis and the SQL table (expiry follows
 * the Effect Clock, so TestClock drives leases), with fault injection and every save in the event log.
 */
import { Clock, Effect, Layer, Option } from "effect"
import * as Checkpoint from "../../src/Checkpoint.js"
import { CheckpointUnavailable } from "../../src/Domain.js"
import type { EventLog } from "./EventLog.js"

export interface StoreFaults {
  /** Called for every checkpoint write (fenced set) at the Clock's `now`; `n` counts from 1. True fails it. */
  readonly save?: (n: number, now: number) => boolean
  /** True: write `n` is applied but its answer is lost (the caller sees the store unreachable). */
  readonly answerLost?: (n: number) => boolean
  /** Run when write `n` is refused for want of the lock, before the refusal reaches the caller. */
  readonly refused?: (n: number) => Effect.Effect<void>
  /** Run before write `n` reaches the store: the time a write takes on its way. */
  readonly latency?: (n: number) => Effect.Effect<void>
  /** Run before a lock is taken, after which it is taken (an INSERT that waits on a locked table, say). */
  readonly acquire?: Effect.Effect<void>
  /** True: listing runs is refused (a Redis user without SMEMBERS). */
  readonly list?: boolean
}

export const unavailable = (operation: string) =>
  new CheckpointUnavailable({ store: "memory", operation, detail: "connection refused", transient: true })

export class MemoryStore {
  readonly data = new Map<string, { value: string; expiresAt: number | undefined }>()
  saves = 0
  /** While true every operation fails as an unreachable store would. */
  down = false

  constructor(readonly log: EventLog | undefined = undefined, public faults: StoreFaults = {}) {}

  private live(key: string, now: number) {
    const entry = this.data.get(key)
    if (entry === undefined) return undefined
    if (entry.expiresAt !== undefined && entry.expiresAt <= now) {
      this.data.delete(key)
      return undefined
    }
    return entry
  }

  /** Records (not locks) whose key starts with `run:`. */
  records(): Array<string> {
    return [...this.data.entries()].filter(([k]) => k.startsWith("run:")).map(([, v]) => v.value)
  }

  get store(): Checkpoint.Store {
    const withNow = <A>(f: (now: number) => A) =>
      Effect.suspend(() =>
        this.down ? Effect.fail(unavailable("any operation")) : Effect.map(Clock.currentTimeMillis, f)
      )
    const store: Checkpoint.Store = {
      name: "memory",
      locate: (key) => `memory key ${key}`,
      get: (key) => withNow((now) => Option.fromNullable(this.live(key, now)?.value)),
      set: (key, value) => withNow(() => void this.data.set(key, { value, expiresAt: undefined })),
      list: (prefix) =>
        this.faults.list === true
          ? Effect.fail(
            new CheckpointUnavailable({
              store: "memory",
              operation: "listing runs",
              detail: "NOPERM this user has no permissions to run the 'smembers' command",
              transient: false
            })
          )
          : withNow((now) => [...this.data.keys()].filter((k) => k.startsWith(prefix) && this.live(k, now))),
      setFenced: (key, value, lockKey, holder) =>
        Effect.flatMap(
          Effect.suspend(() => this.faults.latency?.(this.saves + 1) ?? Effect.void),
          () =>
            Effect.flatMap(withNow((now) => now), (now) => {
              const n = ++this.saves
              if (this.faults.save?.(n, now) === true) return Effect.fail(unavailable("writing the checkpoint"))
              if (this.live(lockKey, now)?.value !== holder) {
                return Effect.as(this.faults.refused?.(n) ?? Effect.void, false)
              }
              this.data.set(key, { value, expiresAt: undefined })
              const record = JSON.parse(value) as { cursor: string; done: Array<[string, string]>; status: string }
              this.log?.push({ _tag: "save", cursor: record.cursor, done: record.done, status: record.status })
              return this.faults.answerLost?.(n) === true
                ? Effect.fail(unavailable("writing the checkpoint"))
                : Effect.succeed(true)
            })
        ),
      acquire: (lockKey, holder, ttl) =>
        Effect.zipRight(
          Effect.suspend(() => this.faults.acquire ?? Effect.void),
          withNow((now) => {
            if (this.live(lockKey, now) !== undefined) return false
            this.data.set(lockKey, { value: holder, expiresAt: now + ttl })
            return true
          })
        ),
      swap: (lockKey, expected, holder, ttl) =>
        withNow((now) => {
          if (this.live(lockKey, now)?.value !== expected) return false
          this.data.set(lockKey, { value: holder, expiresAt: now + ttl })
          return true
        }),
      renew: (lockKey, holder, ttl) =>
        withNow((now) => {
          const entry = this.live(lockKey, now)
          if (entry?.value !== holder) return false
          entry.expiresAt = now + ttl
          return true
        }),
      release: (lockKey, holder) =>
        withNow((now) => {
          if (this.live(lockKey, now)?.value === holder) this.data.delete(lockKey)
        }),
      reclaim: (lockKey, holder, ttl, key, expected) =>
        withNow((now) => {
          const record = this.live(key, now)
          if (this.live(lockKey, now) !== undefined || (record !== undefined && !expected.includes(record.value))) {
            return false
          }
          this.data.set(lockKey, { value: holder, expiresAt: now + ttl })
          return true
        }),
      inspect: (lockKey) =>
        withNow((now) => {
          const entry = this.live(lockKey, now)
          return entry === undefined
            ? Option.none()
            : Option.some({
              value: entry.value,
              expiresInMillis: entry.expiresAt === undefined ? null : entry.expiresAt - now
            })
        })
    }
    return store
  }

  layer(host: Checkpoint.Host = testHost): Layer.Layer<Checkpoint.Checkpoint> {
    return Layer.sync(Checkpoint.Checkpoint, () => Checkpoint.make(this.store, host))
  }
}

/** This test process, on a host where only the pids in `alive` run. */
export const testHost: Checkpoint.Host = {
  hostname: "test-host",
  pidNamespace: "pid:[4026531836]",
  bootId: "3f0c8a52-2b8e-4d0e-9a55-6f1b2c7d9e10",
  pid: 1000,
  isAlive: (pid) => pid === 1000
}
