/**
 * What the operator sees, against MariaDB + Redis through the built CLI: `status` during and after a run,
 * `verify` passing and then failing when one ticket gets its old token back, `--dry-run`, and the live
 * progress line under a pseudo-terminal.
 */
import type * as mysql from "mysql2/promise"
import { execFileSync, spawn } from "node:child_process"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { mainJs, runCli, spawnCli } from "./support/cli.js"
import { adminConnection, createDatabase, createRedisPrefix, redisUrl, servicesAvailable } from "./support/services.js"
import {
  expectExit,
  parseJsonSummary,
  seedFixture,
  snapshotOn,
  ticketsOn,
  until,
  untilRotating
} from "./support/tickets.js"

const ticketCount = 30_000

describe.skipIf(!servicesAvailable)("operator experience on MariaDB + Redis", () => {
  let db: Awaited<ReturnType<typeof createDatabase>>
  let admin: mysql.Connection
  const prefix = createRedisPrefix("tt-operator")
  const env = () => ({ DATABASE_URL: db.url, REDIS_URL: redisUrl, REDIS_PREFIX: prefix.name })

  const readTickets = () => ticketsOn(admin)

  beforeAll(async () => {
    db = await createDatabase("tt_operator")
    admin = await adminConnection(db.name)
    await seedFixture({ env: env() }, { users: 50, orders: 500, tickets: ticketCount })
  })

  afterAll(async () => {
    await admin?.end()
    await db?.drop()
    await prefix.drop()
  })

  it("--dry-run counts and plans, and writes nothing (not even a checkpoint)", async () => {
    const before = await readTickets()
    const r = await expectExit(runCli(["regenerate", "--dry-run", "--batch-size", "700"], { env: env() }), 0)
    expect(r.stdout).toContain(
      `would rotate ${ticketCount} tickets (all tickets) in ${Math.ceil(ticketCount / 700)} batches`
    )
    // A throttle below the batch size: the plan says how seldom a batch goes, as the run would.
    const slow = await expectExit(
      runCli(["regenerate", "--dry-run", "--batch-size", "700", "--max-rows-per-second", "100"], { env: env() }),
      0
    )
    expect(slow.stdout).toContain(
      "note: --max-rows-per-second 100 is below the batch size 700: one batch every 7 s; a smaller --batch-size"
    )
    // The resume rules apply as to a real run: nothing to resume here.
    const resume = await expectExit(runCli(["regenerate", "--dry-run", "--resume"], { env: env() }), 2)
    expect(resume.stderr).toMatch(/^error: .*no run/m)
    expect(await readTickets()).toEqual(before)
    expect(await prefix.keys()).toEqual([])
    const status = await expectExit(runCli(["status"], { env: env() }), 0)
    expect(status.stdout).toContain("no run is recorded")
  })

  it("status shows a run while it goes, then the finished run; verify passes, then fails on one old token", async () => {
    const before = await snapshotOn(admin)
    // About 10 s: still going while a fresh `status` process starts, connects and reads the lock.
    const run = spawnCli(["regenerate", "--max-rows-per-second", "3000", "--batch-size", "500"], { env: env() })
    await untilRotating(admin, before)
    const during = await expectExit(runCli(["status"], { env: env() }), 0)
    expect(during.stdout).toMatch(new RegExp(`state: +running, lock held by pid ${run.child.pid} on `))
    expect(during.stdout).toMatch(new RegExp(`rotated: +\\d+ / ${ticketCount} \\(`))
    expect((await run.result).code).toBe(0)

    const after = await expectExit(runCli(["status"], { env: env() }), 0)
    expect(after.stdout).toMatch(/state: +completed/)
    expect(after.stdout).toContain(`rotated:  ${ticketCount} / ${ticketCount} (100.0%)`)
    const json = parseJsonSummary(await expectExit(runCli(["status", "--json"], { env: env() }), 0))
    expect(json).toMatchObject({ run: { status: "completed", rotated: ticketCount, total: ticketCount }, lock: null })

    const ok = await expectExit(runCli(["verify"], { env: env() }), 0)
    expect(ok.stdout).toContain(`${ticketCount} tickets in scope (all tickets), ${ticketCount} rotated by run`)
    expect(ok.stdout).toContain("0 not rotated; 0 duplicate token values")

    // One ticket gets its old token and timestamp back, as if the run had missed it.
    const victim = [...before.values()][ticketCount >> 1]!
    await admin.query("UPDATE `ticket` SET `token` = ?, `updated_at` = ? WHERE `id` = ?", [
      victim.token,
      victim.updated_at,
      victim.id
    ])
    const failed = await runCli(["verify"], { env: env() })
    expect(failed.code).toBe(1)
    expect(failed.stdout).toContain("1 not rotated")
    expect(failed.stdout).toContain(victim.id)
    expect(failed.stdout + failed.stderr).not.toContain(victim.token)
    const failedJson = parseJsonSummary(await runCli(["verify", "--json"], { env: env() }))
    expect(failedJson).toMatchObject({ ok: false, notRotated: 1, notRotatedSample: [victim.id] })
  })

  // `script` (util-linux) gives the CLI a pseudo-terminal.
  const ptyEnv = (columns: number) => ({
    ...process.env,
    ...env(),
    COLUMNS: String(columns),
    LINES: "40",
    TERM: "xterm",
    CI: "false"
  })
  const framesOf = (output: string) => output.split("\r").map((f) => f.replace("\x1b[2K", ""))

  it("under a pseudo-terminal of 80 columns the live line shows %, a bar, rows/s, an ETA, retries and 'throttled'", async () => {
    const command = `node ${mainJs} regenerate --restart --max-rows-per-second 5000 --batch-size 500`
    const output = execFileSync("script", ["-qfec", command, "/dev/null"], {
      env: ptyEnv(80),
      encoding: "utf8",
      timeout: 60_000
    })
    const frames = framesOf(output)
    // On 80 columns the short layout: no label, the rate as "5000/s"; elapsed gives way to the state note.
    const live = frames.filter((f) =>
      /^[\d,]+\/30,000 \d+\.\d% \[[█░]{10,}\] +[\d.k]+\/s ETA \d+s +(elapsed \d+s +)?retries \d+/.test(f)
    )
    expect(live.length, output.slice(0, 2000)).toBeGreaterThan(5)
    expect(live.every((f) => f.length <= 79)).toBe(true)
    // Capped at 5,000 rows/s, the throttle holds back nearly every batch: it shows for most of the run.
    expect(live.filter((f) => f.includes("throttled")).length).toBeGreaterThan(live.length / 2)
    expect(output).toContain("\x1b[?25l")
    expect(output).toContain("\x1b[?25h")
  })

  /**
   * Runs the CLI under a pseudo-terminal, sends it SIGINT `signals` times once it is drawing (after
   * `beforeSignals`), and waits.
   */
  const interruptedOnPty = async (args: string, signals: number, beforeSignals = async () => {}) => {
    const script = spawn("script", ["-qfec", `exec node ${mainJs} ${args}`, "/dev/null"], { env: ptyEnv(100) })
    let output = ""
    script.stdout.on("data", (chunk) => (output += chunk))
    const closed = new Promise<number | null>((resolve) => script.on("close", resolve))
    await until("the progress line is drawn", () => output.includes("ETA"), { everyMs: 50 })
    await new Promise((r) => setTimeout(r, 500))
    const pid = Number(execFileSync("pgrep", ["-P", String(script.pid)], { encoding: "utf8" }).trim())
    await beforeSignals()
    for (let i = 0; i < signals; i++) {
      process.kill(pid, "SIGINT")
      await new Promise((r) => setTimeout(r, 100))
    }
    return { code: await closed, output }
  }

  it("Ctrl-C under a pseudo-terminal: the line is finished and the cursor shown again, once or twice pressed", async () => {
    const once = await interruptedOnPty("regenerate --restart --max-rows-per-second 3000 --batch-size 500", 1)
    expect(once.code, once.output).toBe(130)
    expect(once.output, once.output.slice(-600)).toContain("resume with: ")
    expect(once.output.lastIndexOf("\x1b[?25h"), JSON.stringify(once.output.slice(-600))).toBeGreaterThan(
      once.output.lastIndexOf("\x1b[?25l")
    )
    // Twice: every ticket locked by another transaction keeps a batch in flight, so that the first Ctrl-C
    // cannot end the run before the second arrives.
    const locker = await adminConnection(db.name)
    const twice = await interruptedOnPty(
      "regenerate --resume --max-rows-per-second 3000 --batch-size 500",
      2,
      async () => {
        // The run's batches may deadlock with this whole-table lock: InnoDB picks one side; take it again.
        for (let attempt = 0;; attempt++) {
          try {
            await locker.query("BEGIN")
            await locker.query("SELECT `id` FROM `ticket` FOR UPDATE")
            break
          } catch (error) {
            await locker.query("ROLLBACK")
            if (attempt >= 5 || !/Deadlock/.test(String(error))) throw error
          }
        }
        await new Promise((r) => setTimeout(r, 1000))
      }
    ).finally(() => locker.end())
    expect(twice.code, twice.output).toBe(130)
    expect(twice.output.lastIndexOf("\x1b[?25h"), JSON.stringify(twice.output.slice(-600))).toBeGreaterThan(
      twice.output.lastIndexOf("\x1b[?25l")
    )

    // --dry-run against that unfinished run follows the resume rules and writes nothing.
    const keys = await prefix.keys()
    const plain = await expectExit(runCli(["regenerate", "--dry-run"], { env: env() }), 2)
    expect(plain.stderr).toMatch(/--resume.*--restart|--restart.*--resume/)
    const resume = await expectExit(runCli(["regenerate", "--dry-run", "--resume"], { env: env() }), 0)
    expect(resume.stdout).toMatch(/^would resume run \w+ \((interrupted|running), \d+ rotated/m)
    const restart = await expectExit(runCli(["regenerate", "--dry-run", "--restart"], { env: env() }), 0)
    expect(restart.stdout).toMatch(/^would abandon run \w+ .* and start a new run$/m)
    expect(restart.stdout).toContain(`would rotate ${ticketCount} tickets`)
    expect(await prefix.keys()).toEqual(keys)
  })

  it("a run of all tickets left half done, then one of live tickets completed: status and verify name the first, with either store", async () => {
    for (const storeEnv of [env(), { DATABASE_URL: db.url }]) {
      const before = await snapshotOn(admin)
      const halfDone = spawnCli(["regenerate", "--restart", "--batch-size", "500", "--max-rows-per-second", "2000"], {
        env: storeEnv
      })
      await untilRotating(admin, before)
      halfDone.child.kill("SIGINT")
      expect((await halfDone.result).code).toBe(130)
      await expectExit(runCli(["regenerate", "--live-only", "--restart"], { env: storeEnv }), 0)
      const status = JSON.parse((await expectExit(runCli(["status", "--json"], { env: storeEnv }), 0)).stdout)
      expect(status.run).toMatchObject({ scope: { liveOnly: true }, status: "completed" })
      expect(status.otherUnfinished).toMatchObject([
        { scope: { liveOnly: false }, status: "interrupted", resume: "regenerate --resume" }
      ])
      const verify = await expectExit(runCli(["verify"], { env: storeEnv }), 0)
      expect(verify.stdout).toMatch(
        /^ {2}note: also unfinished: run \w+ \(all tickets\), interrupted, \d+\/30000 rotated: resume with `regenerate --resume`$/m
      )
      await expectExit(runCli(["regenerate", "--resume"], { env: storeEnv }), 0)
      const after = JSON.parse((await expectExit(runCli(["status", "--json"], { env: storeEnv }), 0)).stdout)
      expect(after.otherUnfinished).toEqual([])
    }
  })
})
