/**
 * The checkpoint table's lock primitives (the store used without REDIS_URL), on an in-memory SQLite
 * database: leases are timed by the database's clock, not by the runner's.
 */
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import * as SqlClient from "@effect/sql/SqlClient"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Option, TestClock } from "effect"
import type { Store } from "../src/Checkpoint.js"
import { makeSqlStore } from "../src/Checkpoint/Sql.js"
import checkpointTable from "../src/migrations/0002_checkpoint_table.js"

const withStore = <A, E>(f: (store: Store) => Effect.Effect<A, E>) =>
  Effect.gen(function*() {
    yield* checkpointTable
    return yield* f(yield* makeSqlStore(yield* SqlClient.SqlClient, "memory"))
  }).pipe(Effect.provide(SqliteClient.layer({ filename: ":memory:" })))

const realSleep = (millis: number) => Effect.promise(() => new Promise((resolve) => setTimeout(resolve, millis)))

describe("the checkpoint table's lock", () => {
  it.effect("a runner whose clock is an hour ahead still sees the live holder's lease", () =>
    withStore((store) =>
      Effect.gen(function*() {
        expect(yield* store.acquire("lock:a", "holder-1", 30_000)).toBe(true)
        yield* TestClock.setTime(Date.now() + 3_600_000)
        expect(yield* store.acquire("lock:a", "holder-2", 30_000)).toBe(false)
        const held = yield* store.inspect("lock:a")
        expect(Option.map(held, (h) => h.value)).toEqual(Option.some("holder-1"))
        const left = Option.getOrThrow(held).expiresInMillis
        expect(left).toBeGreaterThan(25_000)
        expect(left).toBeLessThanOrEqual(30_000)
      })
    ))

  it.effect("an expired lease can be taken; renewing belongs to the holder only", () =>
    withStore((store) =>
      Effect.gen(function*() {
        expect(yield* store.acquire("lock:b", "holder-1", 50)).toBe(true)
        expect(yield* store.renew("lock:b", "holder-2", 30_000)).toBe(false)
        yield* realSleep(80)
        expect(yield* store.inspect("lock:b")).toEqual(Option.none())
        expect(yield* store.acquire("lock:b", "holder-2", 30_000)).toBe(true)
        expect(yield* store.renew("lock:b", "holder-1", 30_000)).toBe(false)
        expect(yield* store.renew("lock:b", "holder-2", 30_000)).toBe(true)
      })
    ))
})
