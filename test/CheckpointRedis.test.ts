/**
 * The Redis store's listing of run records (for `status` and `verify`, which name the unfinished runs of
 * other scopes), on the real Redis: the store indexes each key it writes, so the listing reads one set
 * instead of walking a keyspace that the site's cache may fill.
 */
import { Effect, Redacted } from "effect"
import { Redis } from "ioredis"
import { afterAll, describe, expect, it } from "vitest"
import { makeRedisStore, redisClient } from "../src/Checkpoint/Redis.js"
import { createRedisPrefix, redisUrl, servicesAvailable } from "./support/services.js"

describe.skipIf(!servicesAvailable)("the Redis store's list", () => {
  const prefix = createRedisPrefix("tt-list")
  const target = { url: Redacted.make(redisUrl), display: redisUrl }
  const withStore = <A, E>(name: string, f: (store: ReturnType<typeof makeRedisStore>) => Effect.Effect<A, E>) =>
    Effect.runPromise(
      Effect.scoped(Effect.flatMap(redisClient(target), (client) => f(makeRedisStore(client, target, name))))
    )
  const plain = new Redis(redisUrl, { maxRetriesPerRequest: 1 })
  plain.on("error", () => {})
  afterAll(async () => {
    await prefix.drop()
    plain.disconnect()
  })

  it("names every key the store wrote under a prefix, and nothing it did not write", async () => {
    const listed = await withStore(prefix.name, (store) =>
      Effect.gen(function*() {
        yield* store.set("latest:db1", "run:db1:a")
        yield* store.set("run:db1:a", "{}")
        yield* store.set("run:db2:x", "{}")
        expect(yield* store.acquire("lock:db1:b", "holder-b", 30_000)).toBe(true)
        expect(yield* store.setFenced("run:db1:b", "{}", "lock:db1:b", "holder-b")).toBe(true)
        // Refused by the fence: not written, so not listed.
        expect(yield* store.setFenced("run:db1:c", "{}", "lock:db1:b", "someone-else")).toBe(false)
        // A key under the prefix that the store did not write (put there by hand).
        yield* Effect.promise(() => plain.set(`${prefix.name}:run:db1:by-hand`, "{}"))
        return yield* store.list("run:db1:")
      }))
    expect([...listed].sort()).toEqual(["run:db1:a", "run:db1:b"])
    expect(await plain.get(`${prefix.name}:run:db1:c`)).toBeNull()
  })

  it("writes nothing when the index cannot take the key (another program's data under its name)", async () => {
    const name = `${prefix.name}-damaged`
    await plain.set(`${name}:index`, "not a set")
    try {
      const written = await withStore(name, (store) => Effect.either(store.set("run:db1:a", "{}")))
      expect(written._tag).toBe("Left")
      expect(await plain.exists(`${name}:run:db1:a`)).toBe(0)
    } finally {
      await plain.del(`${name}:index`)
    }
  })
})
