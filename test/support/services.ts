/**
 * Real MariaDB and Redis for integration tests: each test file gets its own database and Redis key prefix
 * and removes them afterwards. When a server is unreachable the tests skip with a loud reason, unless
 * REQUIRE_SERVICES=1 (CI), where that is a failure.
 */
import { Redis } from "ioredis"
import * as mysql from "mysql2/promise"
import { randomBytes } from "node:crypto"
import * as net from "node:net"

export const mysqlHost = process.env.TEST_MYSQL_HOST ?? "127.0.0.1"
export const mysqlPort = Number(process.env.TEST_MYSQL_PORT ?? 3306)
export const mysqlUser = process.env.TEST_MYSQL_USER ?? "root"
export const mysqlPassword = process.env.TEST_MYSQL_PASSWORD ?? ""
export const redisUrl = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379"

const required = process.env.REQUIRE_SERVICES === "1"

const reachable = async (check: () => Promise<unknown>): Promise<string | undefined> => {
  try {
    await check()
    return undefined
  } catch (error) {
    return error instanceof Error ? error.message : String(error)
  }
}

const mysqlProblem = await reachable(async () => {
  const conn = await mysql.createConnection({
    host: mysqlHost,
    port: mysqlPort,
    user: mysqlUser,
    password: mysqlPassword,
    connectTimeout: 3000
  })
  await conn.end()
})

const redisProblem = await reachable(async () => {
  const client = new Redis(redisUrl, { lazyConnect: true, connectTimeout: 3000, maxRetriesPerRequest: 0 })
  client.on("error", () => {})
  try {
    await client.connect()
    await client.ping()
  } finally {
    client.disconnect()
  }
})

const problem = [
  mysqlProblem && `MariaDB at ${mysqlHost}:${mysqlPort}: ${mysqlProblem}`,
  redisProblem && `Redis at ${redisUrl}: ${redisProblem}`
].filter(Boolean).join("; ")

if (problem !== "") {
  if (required) throw new Error(`REQUIRE_SERVICES=1 but the test services are unreachable: ${problem}`)
  console.warn(`\n!!! SKIPPING integration tests: ${problem}\n!!! (set REQUIRE_SERVICES=1 to make this a failure)\n`)
}

/** True when MariaDB and Redis are both reachable (the integration suites run only then). */
export const servicesAvailable = problem === ""

/**
 * A port for a private server: below Linux's range for outgoing connections (32768 and up), which a port
 * of a live or just-closed connection would otherwise collide with.
 */
export const spareTcpPort = (): number => 20_000 + Math.floor(Math.random() * 12_000)

export const uniqueName = (prefix: string) => `${prefix}_${Date.now().toString(36)}_${randomBytes(3).toString("hex")}`

export const adminConnection = (database?: string) =>
  mysql.createConnection({
    host: mysqlHost,
    port: mysqlPort,
    user: mysqlUser,
    password: mysqlPassword,
    dateStrings: true,
    ...(database === undefined ? {} : { database })
  })

/** A fresh database; `drop` removes it. */
export const createDatabase = async (prefix = "tt_test") => {
  const name = uniqueName(prefix)
  const admin = await adminConnection()
  await admin.query(`CREATE DATABASE \`${name}\``)
  await admin.end()
  const url = `mysql://${encodeURIComponent(mysqlUser)}${
    mysqlPassword === "" ? "" : `:${encodeURIComponent(mysqlPassword)}`
  }@${mysqlHost}:${mysqlPort}/${name}`
  return {
    name,
    url,
    drop: async () => {
      const conn = await adminConnection()
      await conn.query(`DROP DATABASE IF EXISTS \`${name}\``)
      await conn.end()
    }
  }
}

/** A fresh Redis key prefix; `drop` deletes every key under it. */
export const createRedisPrefix = (prefix = "tt-test") => {
  const name = uniqueName(prefix)
  const withClient = async <A>(f: (client: Redis) => Promise<A>) => {
    const client = new Redis(redisUrl, { maxRetriesPerRequest: 1 })
    client.on("error", () => {})
    try {
      return await f(client)
    } finally {
      client.disconnect()
    }
  }
  return {
    name,
    /** Every key under the prefix. */
    keys: () => withClient((client) => client.keys(`${name}:*`).then((keys) => keys.sort())),
    drop: () =>
      withClient(async (client) => {
        const keys = await client.keys(`${name}:*`)
        if (keys.length > 0) await client.del(...keys)
      })
  }
}

/**
 * A TCP proxy in front of MariaDB that can play a server which stops answering without closing anything (a
 * frozen host, a failover behind a load balancer): `freeze(millis)` stops passing data on every open
 * connection for good — their statements never get an answer, though the sockets stay up — and holds new
 * connections silent for `millis`, after which they work again; `freezeOn(text, millis)` does so when a
 * client first sends `text` (a statement being prepared), that packet included. `url` is `databaseUrl`
 * through the proxy.
 */
export const freezingProxy = async (databaseUrl: string) => {
  const links = new Set<{ dead: boolean; close: () => void }>()
  let frozen = false
  let trigger: { text: string; millis: number } | undefined
  let freezes = 0
  const freeze = (millis: number) => {
    freezes++
    frozen = true
    for (const link of links) link.dead = true
    setTimeout(() => (frozen = false), millis)
  }
  const server = net.createServer((client) => {
    const upstream = net.connect(mysqlPort, mysqlHost)
    const link = { dead: frozen, close: () => (client.destroy(), upstream.destroy()) }
    links.add(link)
    client.on("data", (data) => {
      if (trigger !== undefined && data.includes(trigger.text)) {
        freeze(trigger.millis)
        trigger = undefined
      }
      return link.dead || upstream.write(data)
    })
    upstream.on("data", (data) => link.dead || client.write(data))
    for (const socket of [client, upstream]) {
      socket.on("error", link.close)
      socket.on("close", () => (links.delete(link), link.close()))
    }
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const { port } = server.address() as net.AddressInfo
  return {
    url: databaseUrl.replace(/@[^/]*\//, `@127.0.0.1:${port}/`),
    freeze,
    /** How many times it froze. */
    freezes: () => freezes,
    freezeOn: (text: string, millis: number) => {
      trigger = { text, millis }
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const link of links) link.close()
        server.close(() => resolve())
      })
  }
}
