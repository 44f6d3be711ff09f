/**
 * The Redis store's listing of run records (for `status` and `verify`, which name the unfinished runs of
 * other scopes), on the real Redis: SCAN over the prefix, whose glob characters match only themselves.
 */
import { Effect, Redacted } from "effect"
import { Redis } from "ioredis"
import { afterAll, describe, expect, it } from "vitest"
import { makeRedisStore } from "../src/Checkpoint/Redis.js"
import { createRedisPrefix, redisUrl, servicesAvailable } from "./support/services.js"

describe.skipIf(!servicesAvailable)("the Redis store's list", () => {
  const base = createRedisPrefix("tt-list").name
  const client = new Redis(redisUrl, { maxRetriesPerRequest: 1 })
  client.on("error", () => {})
  // A prefix with each of SCAN's glob characters, and the keys an unescaped pattern would also take.
  const prefix = `${base}[*?]\\`
  const keys = [
    ...Array.from({ length: 1500 }, (_, i) => `${prefix}:run:db1:${String(i).padStart(4, "0")}`),
    `${prefix}:run:db2:other-database`,
    `${prefix}:lock:db1:a-lock`,
    `${base}*:run:db1:another-prefix`,
    `${base}?:run:db1:another-prefix`,
    `${base}x:run:db1:another-prefix`
  ]
  afterAll(async () => {
    await client.del(...keys)
    client.disconnect()
  })

  it("returns every key under the prefix that starts so, and no key of another prefix", async () => {
    for (let i = 0; i < keys.length; i += 500) await client.mset(...keys.slice(i, i + 500).flatMap((k) => [k, "{}"]))
    // The listing needs no script of the store's: a plain client does.
    const scriptClient = client as unknown as Parameters<typeof makeRedisStore>[0]
    const store = makeRedisStore(scriptClient, { url: Redacted.make(redisUrl), display: redisUrl }, prefix)
    const listed = await Effect.runPromise(store.list("run:db1:"))
    // More keys than one SCAN call returns: the cursor is followed to the end.
    expect([...listed].sort()).toEqual(keys.slice(0, 1500).map((k) => k.slice(prefix.length + 1)))
  })
})
