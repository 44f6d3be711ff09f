/**
 * The Redis store on real Redis servers. Its listing of run records (for `status` and `verify`, which name
 * the unfinished runs of other scopes): the store indexes each key it writes, so the listing reads one set
 * instead of walking a keyspace that the site's cache may fill. Its warning for a Redis that evicts keys.
 */
import { Effect, Redacted } from "effect"
import { Redis } from "ioredis"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { makeRedisStore, redisClient, storeWarnings } from "../src/Checkpoint/Redis.js"
import { runCli, spawnCli } from "./support/cli.js"
import { privateRedis, removePrivateRedisDirs } from "./support/privateRedis.js"
import { createRedisPrefix, redisUrl, servicesAvailable } from "./support/services.js"
import { seedFixture } from "./support/tickets.js"

afterAll(removePrivateRedisDirs)

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

  it("names every run record the store wrote under a prefix, and nothing it did not write", async () => {
    const listed = await withStore(prefix.name, (store) =>
      Effect.gen(function*() {
        yield* store.set("latest:db1", "run:db1:a")
        expect(yield* store.acquire("lock:db1", "holder", 30_000)).toBe(true)
        for (const key of ["run:db1:a", "run:db1:b", "run:db2:x"]) {
          expect(yield* store.setFenced(key, "{}", "lock:db1", "holder")).toBe(true)
        }
        // Refused by the fence: not written, so not listed.
        expect(yield* store.setFenced("run:db1:c", "{}", "lock:db1", "someone-else")).toBe(false)
        // A key under the prefix that the store did not write (put there by hand).
        yield* Effect.promise(() => plain.set(`${prefix.name}:run:db1:by-hand`, "{}"))
        return yield* store.list("run:db1:")
      }))
    expect([...listed].sort()).toEqual(["run:db1:a", "run:db1:b"])
    expect(await plain.get(`${prefix.name}:run:db1:c`)).toBeNull()
  })

  it("without an index (records of an earlier version), a listing finds them by SCAN and writes nothing; a run indexes them", async () => {
    // A prefix with SCAN's glob characters, and keys that an unescaped pattern would also take.
    const name = `${prefix.name}[*?]\\`
    const earlier = Array.from({ length: 1500 }, (_, i) => `run:db1:${String(i).padStart(4, "0")}`)
    const others = [`${prefix.name}*:run:db1:another-prefix`, `${prefix.name}x:run:db1:another-prefix`]
    try {
      for (let i = 0; i < earlier.length; i += 500) {
        await plain.mset(...earlier.slice(i, i + 500).flatMap((key) => [`${name}:${key}`, "{}"]))
      }
      await plain.mset(...others.flatMap((key) => [key, "{}"]))
      const first = await withStore(name, (store) => store.list("run:db1:"))
      // More keys than one SCAN call returns: the cursor is followed to the end.
      expect([...first].sort()).toEqual(earlier)
      // A listing (status, a dry run) only reads.
      expect(await plain.exists(`${name}:index`)).toBe(0)
      // A run, once it holds its lock, indexes them before its first write.
      await withStore(name, (store) => store.indexRuns ?? Effect.die("no indexRuns"))
      expect(await plain.scard(`${name}:index`)).toBe(earlier.length)
      // From now on the index answers: a key put there by hand afterwards is not seen.
      await plain.set(`${name}:run:db1:by-hand`, "{}")
      expect([...(await withStore(name, (store) => store.list("run:db1:")))].sort()).toEqual(earlier)
    } finally {
      const keys = await plain.keys(`${name.replace(/[*?[\]\\]/g, "\\$&")}:*`)
      await plain.del(...keys, ...others)
    }
  })

  it("writes nothing when the index cannot take the key (another program's data under its name)", async () => {
    const name = `${prefix.name}-damaged`
    await plain.set(`${name}:index`, "not a set")
    try {
      const written = await withStore(name, (store) =>
        Effect.gen(function*() {
          expect(yield* store.acquire("lock:db1", "holder", 30_000)).toBe(true)
          return yield* Effect.either(store.setFenced("run:db1:a", "{}", "lock:db1", "holder"))
        }))
      expect(written._tag === "Left" && written.left.message).toContain(
        `redis key ${name}:index on ${redisUrl} is not a set (another program's data under the tool's prefix?)`
      )
      expect(await plain.exists(`${name}:run:db1:a`)).toBe(0)
    } finally {
      await plain.del(`${name}:index`, `${name}:lock:db1`)
    }
  })
})

describe.skipIf(!servicesAvailable)("the Redis store's warnings", () => {
  const warningsOf = (url: string) => {
    const target = { url: Redacted.make(url), display: url }
    return Effect.runPromise(
      Effect.scoped(Effect.flatMap(redisClient(target), (client) => storeWarnings(client, target)))
    )
  }
  const withSeededSqlite = async <A>(redis: string, f: (env: Record<string, string>) => Promise<A>) => {
    const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tt-warn-"))
    try {
      const env = { DATABASE_URL: `sqlite:${Path.join(dir, "t.db")}`, REDIS_URL: redis, REDIS_PREFIX: prefix.name }
      await seedFixture({ env }, { users: 5, orders: 5, tickets: 50 })
      return await f(env)
    } finally {
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  }
  const prefix = createRedisPrefix("tt-warn")
  afterAll(() => prefix.drop())

  it("a Redis that evicts any key when full is named; a run and a dry run say so; one that keeps its keys is not", async () => {
    const evicting = privateRedis({
      persist: false,
      args: ["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]
    })
    const volatile = privateRedis({
      persist: false,
      args: ["--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru"]
    })
    // allkeys-lru without a memory limit never evicts.
    const unlimited = privateRedis({ persist: false, args: ["--maxmemory-policy", "allkeys-lru"] })
    const servers = [evicting, volatile, unlimited]
    try {
      await Promise.all(servers.map((server) => server.start()))
      expect(await warningsOf(evicting.url)).toEqual([
        expect.stringMatching(/evicts any key when its memory is full \(maxmemory-policy allkeys-lru\)/)
      ])
      for (const url of [volatile.url, unlimited.url, redisUrl]) expect(await warningsOf(url)).toEqual([])
      await withSeededSqlite(evicting.url, async (env) => {
        const plan = await runCli(["regenerate", "--dry-run", "--json"], { env })
        expect(plan.code).toBe(0)
        expect(JSON.parse(plan.stdout).storeWarnings).toEqual([
          expect.stringMatching(/^Redis at redis:\/\/127\.0\.0\.1:\d+ evicts any key/)
        ])
        expect(plan.stderr).toMatch(/^warning: Redis at .* evicts any key .*leave REDIS_URL unset/m)
        const run = await runCli(["regenerate", "--json"], { env })
        expect(run.code).toBe(0)
        expect(JSON.parse(run.stdout)).toMatchObject({ status: "completed", rotated: 50 })
        expect(run.stderr).toMatch(/^warning: Redis at .* evicts any key/m)
        expect(`${plan.stdout}${plan.stderr}${run.stderr}`).not.toContain(evicting.password)
      })
    } finally {
      await Promise.all(servers.map((server) => server.stop()))
    }
  })

  it("a password the server does not need is said once, in the tool's words (not ioredis's console line)", async () => {
    const open = privateRedis({ persist: false, requirePassword: false })
    try {
      await open.start()
      const url = `redis://:not-needed-pw@127.0.0.1:${open.port}`
      expect(await warningsOf(url)).toEqual([
        expect.stringMatching(/needs no password: the one REDIS_URL gives is not used/)
      ])
      expect(await warningsOf(open.url)).toEqual([])
      await withSeededSqlite(url, async (env) => {
        const plan = await runCli(["regenerate", "--dry-run"], { env })
        expect(plan.code).toBe(0)
        const warning = `warning: Redis at redis://127.0.0.1:${open.port} needs no password`
        expect(plan.stdout).toContain(warning)
        const run = await runCli(["regenerate"], { env })
        expect(run.code, run.stderr).toBe(0)
        expect(run.stderr.split(warning).length - 1, "said once").toBe(1)
        for (const result of [plan, run, await runCli(["status"], { env })]) {
          expect(result.stdout + result.stderr).not.toContain("[WARN]")
          expect(result.stdout + result.stderr).not.toContain("not-needed-pw")
        }
      })
    } finally {
      await open.stop()
    }
  })

  it("a Redis replica is refused before anything is written, by the dry run too (exit 2, one line)", async () => {
    const primary = privateRedis({ persist: false, requirePassword: false })
    try {
      await primary.start()
      const replica = privateRedis({
        persist: false,
        requirePassword: false,
        args: ["--replicaof", "127.0.0.1", String(primary.port)]
      })
      try {
        await replica.start()
        await withSeededSqlite(`redis://127.0.0.1:${replica.port}`, async (env) => {
          const before = Fs.readFileSync(env.DATABASE_URL!.slice("sqlite:".length))
          for (const args of [["regenerate", "--dry-run"], ["regenerate"], ["regenerate", "--restart"]]) {
            const r = await runCli(args, { env })
            expect(r.code, r.stderr).toBe(2)
            expect(`${r.stdout}${r.stderr}`.trim().split("\n")).toEqual([
              `error: Redis at redis://127.0.0.1:${replica.port} refused a run's writes: it is a replica (of ` +
              `127.0.0.1:${primary.port}), which takes no writes. Check the host and port (the primary's) in ` +
              "REDIS_URL; nothing was changed."
            ])
          }
          expect(Fs.readFileSync(env.DATABASE_URL!.slice("sqlite:".length)).equals(before)).toBe(true)
          // status reads a replica as well as a primary.
          expect((await runCli(["status"], { env })).code).toBe(0)
          const c = primary.client()
          await c.connect()
          expect(await c.dbsize()).toBe(0)
          c.disconnect()
        })
      } finally {
        await replica.stop()
      }
    } finally {
      await primary.stop()
    }
  })
})

/**
 * A TCP server on a spare port in place of Redis, each connection given to `onConnection`, with a migrated
 * SQLite database beside it: `f` gets the environment for the CLI. Both are gone afterwards.
 */
const withFakeRedis = async (
  onConnection: (socket: Net.Socket) => void,
  f: (env: Record<string, string>) => Promise<void>
) => {
  const sockets: Array<Net.Socket> = []
  const server = Net.createServer((socket) => {
    sockets.push(socket)
    socket.on("error", () => {})
    onConnection(socket)
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as Net.AddressInfo).port
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tt-fake-redis-"))
  try {
    const env = { DATABASE_URL: `sqlite:${Path.join(dir, "t.db")}`, REDIS_URL: `redis://127.0.0.1:${port}` }
    expect((await runCli(["migrate"], { env })).code).toBe(0)
    await f(env)
  } finally {
    for (const socket of sockets) socket.destroy()
    server.close()
    Fs.rmSync(dir, { recursive: true, force: true })
  }
}

describe("a Redis that does not answer as a run starts", () => {
  it("Ctrl-C or SIGTERM ends the run at once, as stopped before any batch (said as JSON under --json)", async () => {
    // Takes connections and never answers (a frozen host): the client would wait out its 3 s timeouts.
    let connected = 0
    await withFakeRedis(() => connected++, async (env) => {
      for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
        const before = connected
        const run = spawnCli(["regenerate", "--json"], { env })
        let ended = false
        void run.result.finally(() => (ended = true))
        while (connected === before && !ended) await new Promise((resolve) => setTimeout(resolve, 20))
        expect(ended, "the run connects before it ends").toBe(false)
        const stopped = Date.now()
        run.child.kill(signal)
        const result = await run.result
        expect(Date.now() - stopped, "not waiting out the connect timeout").toBeLessThan(1500)
        expect(result.code, result.stderr).toBe(code)
        expect(JSON.parse(result.stdout)).toEqual({
          status: "interrupted",
          rotated: 0,
          message: "stopped before any batch began: nothing was changed"
        })
      }
    })
  })
})

describe("a server on REDIS_URL's port that is not a Redis", () => {
  it("is said so in one line, not as ioredis's protocol error asking for a report", () =>
    withFakeRedis(
      // As an HTTP server with keep-alive answers: the connection stays open.
      (socket) => socket.on("data", () => socket.write("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")),
      async (env) => {
        const result = await runCli(["status"], { env, timeoutMs: 30_000 })
        expect(result.code).toBe(2)
        expect(result.stderr.trim().split("\n")).toEqual([
          `error: Redis at ${env.REDIS_URL} refused the connection: the server there is not a Redis (its answer ` +
          `began with "H"). Check the host and port in REDIS_URL; nothing was changed.`
        ])
      }
    ))
})
