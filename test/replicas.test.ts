/**
 * Waiting for the replicas (REPLICA_URLS), through the built CLI against a private MariaDB primary and a
 * replica of it: a run holds its batches while the replica does not replicate and goes on once it does;
 * a server that is not a replica, one that cannot be reached, or a lag limit with no replica to watch are
 * refused before anything is written. (The private servers also hold a locked account, refused as a wrong
 * password is.)
 */
import type * as mysql from "mysql2/promise"
import * as Path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { runCli, spawnCli } from "./support/cli.js"
import { missingTools, type PrivateMariadb, startPrivateMariadb } from "./support/privateMariadb.js"
import {
  describeResult,
  expectAllRotated,
  seedFixture,
  snapshotOn,
  type Ticket,
  ticketsOn,
  until
} from "./support/tickets.js"

const missing = missingTools("replica tests")

describe.skipIf(missing.length > 0)("waiting for the replicas (a private primary and its replica)", () => {
  let primary: PrivateMariadb
  let replica: PrivateMariadb
  let primaryAdmin: mysql.Connection
  let replicaAdmin: mysql.Connection
  const primaryUrl = () => `mysql://root@127.0.0.1:${primary.port}/tickets`
  const replicaUrl = () => `mysql://root@127.0.0.1:${replica.port}/own`
  const replicaDisplay = () => `mysql://127.0.0.1:${replica.port}/own`

  /** The primary's tickets as the replica has them now. */
  const replicaTickets = async () => {
    const [rows] = await replicaAdmin.query("SELECT `id`, `token` FROM `tickets`.`ticket` ORDER BY `id`")
    return rows as Array<{ id: string; token: string }>
  }

  beforeAll(async () => {
    primary = await startPrivateMariadb(
      "tickets",
      (dir) => [`--log-bin=${Path.join(dir, "bin")}`, "--server-id=1"]
    )
    replica = await startPrivateMariadb("own", () => ["--server-id=2"])
    // Datetimes as stored (the tickets' helpers compare them as text).
    primaryAdmin = await primary.admin({ database: "tickets", dateStrings: true })
    replicaAdmin = await replica.admin()
    // From the start of the primary's binary log: the replica creates `tickets` and everything in it.
    await replicaAdmin.query(
      `CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = ${primary.port}, MASTER_USER = 'root', ` +
        "MASTER_PASSWORD = '', MASTER_USE_GTID = slave_pos"
    )
    await replicaAdmin.query("START SLAVE")
    await seedFixture({ env: { DATABASE_URL: primaryUrl() } }, { users: 10, orders: 50, tickets: 5000 })
    await until("the replica has every ticket", async () => {
      try {
        return (await replicaTickets()).length === 5000
      } catch {
        return false
      }
    })
  }, 120_000)

  afterAll(async () => {
    await primaryAdmin?.end()
    await replicaAdmin?.end()
    await replica?.stop()
    await primary?.stop()
  }, 60_000)

  it("refuses, in one line and with nothing written: a server that is not a replica, one out of reach, a limit with no replica", async () => {
    const before = await snapshotOn(primaryAdmin)
    // A user of the replica that may connect but not read the replication status.
    await replicaAdmin.query("CREATE USER IF NOT EXISTS 'watcher'@'%' IDENTIFIED BY 'w4tchPw'")
    await replicaAdmin.query("GRANT SELECT ON `own`.* TO 'watcher'@'%'")
    const watcher = `mysql://watcher:w4tchPw@127.0.0.1:${replica.port}/own`
    const cases: Array<[Record<string, string>, Array<string>, number, RegExp]> = [
      [{ REPLICA_URLS: primaryUrl() }, [], 2, /is not a replica \(SHOW REPLICA STATUS says nothing\)/],
      [{ REPLICA_URLS: watcher }, [], 2, /its user may not read the replication status .*REPLICA MONITOR/],
      [
        { REPLICA_URLS: "mysql://root:s3cretPw@127.0.0.1:1/own" },
        [],
        1,
        /^error: cannot connect to the database at mysql:\/\/127\.0\.0\.1:1\/own: .*Check REPLICA_URLS and/
      ],
      [
        { REPLICA_URLS: replicaUrl().replace(/\/own$/, "/nosuchdb") },
        [],
        2,
        /^error: there is no database `nosuchdb` at .*: check its name in REPLICA_URLS \(the database the/
      ],
      [{}, ["--max-replica-lag", "5"], 2, /^error: --max-replica-lag needs the replicas to watch: set REPLICA_URLS/],
      [{ REPLICA_URLS: `${replicaUrl()},` }, [], 2, /^error: REPLICA_URLS is malformed: replica 2: it is empty/]
    ]
    for (const [env, flags, code, message] of cases) {
      for (const args of [["regenerate", ...flags], ["regenerate", "--dry-run", ...flags]]) {
        const r = await runCli(args, { env: { DATABASE_URL: primaryUrl(), ...env } })
        expect(r.code, describeResult(r)).toBe(code)
        expect(r.stderr.trim().split("\n"), describeResult(r)).toHaveLength(1)
        expect(r.stderr).toMatch(message)
        expect(r.stderr).not.toMatch(/s3cretPw|w4tchPw/)
      }
    }
    expect(await snapshotOn(primaryAdmin)).toEqual(before)
  })

  it("a locked account is refused as a wrong password is (exit 2, one line), not as a server out of reach", async () => {
    await replicaAdmin.query("CREATE USER IF NOT EXISTS 'locked'@'%' IDENTIFIED BY 'l0ckedPw' ACCOUNT LOCK")
    await replicaAdmin.query("GRANT SELECT ON `own`.* TO 'locked'@'%'")
    const r = await runCli(["status"], {
      env: { DATABASE_URL: `mysql://locked:l0ckedPw@127.0.0.1:${replica.port}/own` }
    })
    expect(r.code, describeResult(r)).toBe(2)
    expect(r.stderr.trim().split("\n")).toHaveLength(1)
    expect(r.stderr).toMatch(
      /^error: the database at mysql:\/\/127\.0\.0\.1:\d+\/own refused the connection: .*locked/i
    )
    expect(r.stderr).not.toContain("l0ckedPw")
  })

  it("holds every batch while the replica does not replicate, says so, and goes on once it does", async () => {
    const before: ReadonlyMap<string, Ticket> = await snapshotOn(primaryAdmin)
    const env = { DATABASE_URL: primaryUrl(), REPLICA_URLS: replicaUrl() }
    const plan = await runCli(["regenerate", "--dry-run"], { env })
    expect(plan.code, describeResult(plan)).toBe(0)
    expect(plan.stdout).toContain(
      `replicas watched: ${replicaDisplay()} (batches wait while one is more than 10 s behind); none is behind now`
    )

    await replicaAdmin.query("STOP SLAVE SQL_THREAD")
    const run = spawnCli(["regenerate", "--max-replica-lag", "5", "--batch-size", "500"], { env })
    await until(
      "the run says it waits for the replica",
      () => run.output().stderr.includes(`waiting (replica ${replicaDisplay()} does not replicate)`),
      { timeoutMs: 20_000 }
    )
    // Nothing was rotated meanwhile, on the primary.
    expect(await ticketsOn(primaryAdmin)).toEqual([...before.values()])
    await replicaAdmin.query("START SLAVE SQL_THREAD")
    const result = await run.result
    expect(result.code, describeResult(result)).toBe(0)
    const after = await ticketsOn(primaryAdmin)
    expectAllRotated(before, after)
    // And the replica, watched, has the new tokens too.
    const tokens = after.map((t) => ({ id: t.id, token: t.token }))
    await until("the replica has the new tokens", async () => {
      const now = await replicaTickets()
      return JSON.stringify(now) === JSON.stringify(tokens)
    })
  })
})
