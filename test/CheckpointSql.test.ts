/**
 * The checkpoint table's lock primitives (the store used without REDIS_URL), on SQLite and on MariaDB:
 * leases are timed by the database's clock (UTC milliseconds), not by the runner's.
 */
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import * as SqlClient from "@effect/sql/SqlClient"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Layer, Option, TestClock } from "effect"
import type { Store } from "../src/Checkpoint.js"
import { makeSqlStore } from "../src/Checkpoint/Sql.js"
import * as Db from "../src/Db.js"
import checkpointTable from "../src/migrations/0002_checkpoint_table.js"
import { createDatabase, servicesAvailable } from "./support/services.js"

const realSleep = (millis: number) => Effect.promise(() => new Promise((resolve) => setTimeout(resolve, millis)))

const lockTests = (name: string, client: () => Layer.Layer<SqlClient.SqlClient, unknown>) =>
  describe(`the checkpoint table's lock on ${name}`, () => {
    const withStore = <A, E>(f: (store: Store, sql: SqlClient.SqlClient) => Effect.Effect<A, E>) =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* checkpointTable
        return yield* f(yield* makeSqlStore(sql, name), sql)
      }).pipe(Effect.provide(client()), Effect.orDie)

    it.effect("a lease ends at the database's now + ttl, in UTC milliseconds", () =>
      withStore((store, sql) =>
        Effect.gen(function*() {
          expect(yield* store.acquire("lock:utc", "holder-1", 30_000)).toBe(true)
          const [row] = yield* sql.unsafe("SELECT `expires_at` FROM `ticket_tokens_state` WHERE `key` = 'lock:utc'")
            .values
          // The database runs on this host: its clock and ours agree to well within a second.
          expect(Math.abs(Number(row?.[0]) - (Date.now() + 30_000))).toBeLessThan(2_000)
        })
      ))

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

    it.effect("list: the keys that start with a prefix, its LIKE characters taken as they are", () =>
      withStore((store) =>
        Effect.gen(function*() {
          for (const key of ["run:d_1:a", "run:d_1:b", "run:dx1:c", "run:d%1:d", "lock:d_1:e", "run:d_10:f"]) {
            yield* store.set(key, "{}")
          }
          expect([...(yield* store.list("run:d_1:"))].sort()).toEqual(["run:d_1:a", "run:d_1:b"])
          expect(yield* store.list("run:none:")).toEqual([])
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

lockTests("SQLite", () => SqliteClient.layer({ filename: ":memory:" }))

describe.skipIf(!servicesAvailable)("on MariaDB", () => {
  let db: Awaited<ReturnType<typeof createDatabase>>
  beforeAll(async () => {
    db = await createDatabase("tt_state")
  })
  afterAll(async () => {
    await db?.drop()
  })
  lockTests("MariaDB", () =>
    Db.layer({ maxConnections: 2 }).pipe(
      Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map([["DATABASE_URL", db.url]]))))
    ))
})
