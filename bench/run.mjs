// `npm run bench`: the regeneration against the single in-server UPDATE, side by side on one table.
//
//   npm run bench -- [--rows 1000000] [--small-rows 100000] [--repeat 1] [--buffer-pool-mib 2048|keep]
//                    [--sweep 1,2,4,8] [--mysql mysql://root@127.0.0.1:3306] [--redis redis://127.0.0.1:6379]
//
// Creates scratch databases, seeds them through our own seeders, then back to back on the same table:
// the single `UPDATE ticket SET token = LOWER(HEX(RANDOM_BYTES(16)))`, our `regenerate` with default flags,
// and ours again. Before every measured step the server is brought to the same quiet state (undo purged,
// dirty pages flushed), so one run does not bill the next. Reports rows/s, our ratio to the single
// UPDATE, peak RSS from the OS (GNU time), the buffer pool size, the seeding time against a raw
// multi-row INSERT of the same rows, and the peak RSS on a small table (memory must not grow with rows).
import { Redis } from "ioredis"
import * as mysql from "mysql2/promise"
import { execFileSync, spawn, spawnSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

const root = Path.resolve(Path.dirname(fileURLToPath(import.meta.url)), "..")
const mainJs = Path.join(root, "dist", "main.js")

const args = process.argv.slice(2)
const option = (name, fallback) => {
  const i = args.indexOf(`--${name}`)
  return i === -1 ? fallback : args[i + 1]
}
const rows = Number(option("rows", 1_000_000))
const smallRows = Number(option("small-rows", 100_000))
const repeat = Number(option("repeat", 1))
const bufferPoolMib = option("buffer-pool-mib", "2048")
const sweep = option("sweep", "")
const server = new URL(option("mysql", process.env.BENCH_MYSQL_URL ?? "mysql://root@127.0.0.1:3306"))
const redisUrl = option("redis", process.env.BENCH_REDIS_URL ?? "redis://127.0.0.1:6379")

const log = (...parts) => console.error(`[bench ${new Date().toISOString().slice(11, 19)}]`, ...parts)
const tag = `ttbench_${Date.now().toString(36)}_${randomBytes(2).toString("hex")}`
const dbUrl = (name) => {
  const u = new URL(server)
  u.pathname = `/${name}`
  return u.toString()
}

const admin = await mysql.createConnection({
  host: server.hostname,
  port: Number(server.port || 3306),
  user: decodeURIComponent(server.username || "root"),
  password: decodeURIComponent(server.password),
  multipleStatements: true
})
const scalar = async (sql, params = []) => Object.values((await admin.query(sql, params))[0][0] ?? {})[0]
const status = async (name) =>
  Number(
    await scalar("SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = ?", [
      name.toUpperCase()
    ])
  )

/** GNU time, which reports a process's peak RSS: /usr/bin/time (Debian's `time` package) or on PATH (Nix). */
const gnuTime = ["/usr/bin/time", ...(process.env.PATH ?? "").split(":").map((dir) => Path.join(dir, "time"))]
  .find((file) => /^\d+$/.test(spawnSync(file, ["-f", "%M", "true"], { encoding: "utf8" }).stderr?.trim() ?? ""))
if (gnuTime === undefined) console.warn("peak RSS is not measured: GNU time is not installed (apt install time)")

/** Runs a command; returns wall seconds, peak RSS (KB, from GNU time) and output. */
const run = (command, argv, env = {}) =>
  new Promise((resolve, reject) => {
    const timeFile = Path.join(Os.tmpdir(), `${tag}.time`)
    const useTime = gnuTime !== undefined
    const [cmd, cmdArgs] = useTime ? [gnuTime, ["-f", "%M", "-o", timeFile, command, ...argv]] : [command, argv]
    const start = performance.now()
    const child = spawn(cmd, cmdArgs, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (d) => (stdout += d))
    child.stderr.on("data", (d) => (stderr += d))
    child.on("error", reject)
    child.on("close", (code) => {
      const seconds = (performance.now() - start) / 1000
      const rssKb = useTime ? Number(Fs.readFileSync(timeFile, "utf8").trim().split("\n").pop()) : NaN
      if (code !== 0) reject(new Error(`${command} ${argv.join(" ")} exited ${code}\n${stderr.slice(-2000)}`))
      else resolve({ seconds, rssKb, stdout, stderr })
    })
  })

const cli = (db, argv, env = {}) =>
  run(process.execPath, [mainJs, ...argv], { DATABASE_URL: dbUrl(db), REDIS_URL: redisUrl, REDIS_PREFIX: tag, ...env })

/** Waits until InnoDB has purged old row versions and flushed dirty pages: every measurement starts alike. */
const quiesce = async () => {
  const start = Date.now()
  while ((await status("Innodb_history_list_length")) > 1000 && Date.now() - start < 180_000) await sleep(500)
  const pct = await scalar("SELECT @@GLOBAL.innodb_max_dirty_pages_pct")
  await admin.query("SET GLOBAL innodb_max_dirty_pages_pct = 0")
  try {
    while ((await status("Innodb_buffer_pool_pages_dirty")) > 500 && Date.now() - start < 300_000) await sleep(500)
  } finally {
    await admin.query("SET GLOBAL innodb_max_dirty_pages_pct = ?", [Number(pct)])
  }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

const createDatabase = async (name) => {
  await admin.query(`CREATE DATABASE \`${name}\``)
  await cli(name, ["migrate"])
}

const seed = async (name, tickets) => {
  await cli(name, ["seed", "users", "--count", "1000"])
  await cli(name, ["seed", "orders", "--count", "10000"])
  await quiesce()
  return cli(name, ["seed", "tickets", "--count", String(tickets)])
}

/** The same ticket rows loaded by the mariadb client as plain multi-row INSERTs of 1000 rows. */
const rawInsert = async (from, into) => {
  const file = Path.join(Os.tmpdir(), `${tag}.sql`)
  const out = Fs.openSync(file, "w")
  try {
    execFileSync("mariadb-dump", [
      `-h${server.hostname}`,
      `-P${server.port || 3306}`,
      `-u${decodeURIComponent(server.username || "root")}`,
      ...(server.password ? [`-p${decodeURIComponent(server.password)}`] : []),
      "--no-create-info",
      "--skip-triggers",
      "--skip-add-locks",
      "--skip-disable-keys",
      "--compact",
      "--extended-insert",
      "--net-buffer-length=240000",
      from,
      "ticket"
    ], { stdio: ["ignore", out, "inherit"], maxBuffer: 1 << 30 })
  } finally {
    Fs.closeSync(out)
  }
  // Same checks as our seeder: unique and foreign keys stay on (the dump's header would turn them off).
  await admin.query(`INSERT INTO \`${into}\`.\`user\` SELECT * FROM \`${from}\`.\`user\``)
  await admin.query(`INSERT INTO \`${into}\`.\`order\` SELECT * FROM \`${from}\`.\`order\``)
  await quiesce()
  const args = [
    `-h${server.hostname}`,
    `-P${server.port || 3306}`,
    `-u${decodeURIComponent(server.username || "root")}`
  ]
  if (server.password) args.push(`-p${decodeURIComponent(server.password)}`)
  const result = await run("bash", ["-c", `mariadb ${args.map((a) => `'${a}'`).join(" ")} ${into} < ${file}`])
  Fs.rmSync(file)
  return result
}

const singleUpdate = async (db) => {
  await quiesce()
  const start = performance.now()
  const [result] = await admin.query(`UPDATE \`${db}\`.\`ticket\` SET \`token\` = LOWER(HEX(RANDOM_BYTES(16)))`)
  return { seconds: (performance.now() - start) / 1000, rows: result.affectedRows }
}

const ours = async (db, extra = []) => {
  await quiesce()
  const result = await cli(db, ["regenerate", "--json", "--restart", ...extra])
  const summary = JSON.parse(result.stdout.trim())
  if (summary.status !== "completed") throw new Error(`regenerate ended ${summary.status}`)
  return { ...result, rows: summary.rotated, runSeconds: summary.seconds }
}

const originalPool = Number(await scalar("SELECT @@GLOBAL.innodb_buffer_pool_size"))

/** Resizes the buffer pool online and waits until the server reports the new size. */
const setBufferPool = async (bytes) => {
  await admin.query("SET GLOBAL innodb_buffer_pool_size = ?", [bytes])
  const start = Date.now()
  while (Number(await scalar("SELECT @@GLOBAL.innodb_buffer_pool_size")) !== bytes && Date.now() - start < 120_000) {
    await sleep(500)
  }
  await sleep(2000)
}
const mib = (bytes) => Math.round(bytes / 1048576)
const databases = []
const results = []
try {
  if (bufferPoolMib !== "keep" && Number(bufferPoolMib) * 1048576 !== originalPool) {
    log(
      `setting innodb_buffer_pool_size to ${bufferPoolMib} MiB for this run (was ${
        mib(originalPool)
      } MiB; restored at the end)`
    )
    await setBufferPool(Number(bufferPoolMib) * 1048576)
  }
  const pool = Number(await scalar("SELECT @@GLOBAL.innodb_buffer_pool_size"))
  log(
    `MariaDB ${await scalar("SELECT VERSION()")}, buffer pool ${
      mib(pool)
    } MiB, ${Os.cpus().length} CPUs, node ${process.version}`
  )

  for (let r = 1; r <= repeat; r++) {
    const big = `${tag}_${r}`
    const raw = `${tag}_${r}_raw`
    databases.push(big, raw)
    await createDatabase(big)
    await createDatabase(raw)
    log(`round ${r}: seeding ${rows} tickets with our seeder`)
    const seeded = await seed(big, rows)
    log(`round ${r}: the same rows as a raw multi-row INSERT`)
    const rawLoad = await rawInsert(big, raw)
    await admin.query(`DROP DATABASE \`${raw}\``)
    databases.pop()
    log(`round ${r}: single UPDATE`)
    const single = await singleUpdate(big)
    log(`round ${r}: regenerate (defaults)`)
    const first = await ours(big)
    log(`round ${r}: regenerate again`)
    const second = await ours(big)
    const sweepResults = []
    for (const c of sweep ? sweep.split(",").map(Number) : []) {
      log(`round ${r}: regenerate --concurrency ${c}`)
      sweepResults.push({ concurrency: c, ...(await ours(big, ["--concurrency", String(c)])) })
    }
    await admin.query(`DROP DATABASE \`${big}\``)
    databases.splice(databases.indexOf(big), 1)
    results.push({ seeded, rawLoad, single, first, second, sweep: sweepResults })
  }

  let small
  if (smallRows > 0) {
    const name = `${tag}_small`
    databases.push(name)
    await createDatabase(name)
    log(`memory check: regenerate on ${smallRows} tickets`)
    await seed(name, smallRows)
    small = await ours(name)
  }

  const rate = (n, s) => Math.round(n / s)
  const lines = []
  const pool2 = mib(Number(await scalar("SELECT @@GLOBAL.innodb_buffer_pool_size")))
  lines.push(
    `## ${rows} tickets, MariaDB ${await scalar(
      "SELECT VERSION()"
    )}, buffer pool ${pool2} MiB, ${Os.cpus().length} CPUs`
  )
  lines.push("")
  lines.push("| round | step | seconds | rows/s | vs single UPDATE | peak RSS |")
  lines.push("| --- | --- | ---: | ---: | ---: | ---: |")
  results.forEach((x, i) => {
    const base = rate(x.single.rows, x.single.seconds)
    const row = (step, seconds, n, rss) =>
      lines.push(
        `| ${i + 1} | ${step} | ${seconds.toFixed(1)} | ${rate(n, seconds)} | ${
          (rate(n, seconds) / base).toFixed(2)
        }x | ${Number.isNaN(rss) ? "-" : `${Math.round(rss / 1024)} MB`} |`
      )
    row("single in-server UPDATE", x.single.seconds, x.single.rows, NaN)
    row("regenerate (defaults)", x.first.runSeconds, x.first.rows, x.first.rssKb)
    row("regenerate again", x.second.runSeconds, x.second.rows, x.second.rssKb)
    for (const s of x.sweep) row(`regenerate --concurrency ${s.concurrency}`, s.runSeconds, s.rows, s.rssKb)
    row("regenerate (defaults), wall clock incl. startup", x.first.seconds, x.first.rows, x.first.rssKb)
  })
  lines.push("")
  lines.push("| round | seeding | seconds | rows/s | vs raw INSERT |")
  lines.push("| --- | --- | ---: | ---: | ---: |")
  results.forEach((x, i) => {
    lines.push(
      `| ${i + 1} | raw multi-row INSERT (mariadb client) | ${x.rawLoad.seconds.toFixed(1)} | ${
        rate(rows, x.rawLoad.seconds)
      } | 1.00x |`
    )
    lines.push(
      `| ${i + 1} | seed tickets (ours, wall clock) | ${x.seeded.seconds.toFixed(1)} | ${
        rate(rows, x.seeded.seconds)
      } | ${(x.rawLoad.seconds / x.seeded.seconds).toFixed(2)}x |`
    )
  })
  if (small !== undefined) {
    const bigRss = Math.max(...results.flatMap((x) => [x.first.rssKb, x.second.rssKb]))
    lines.push("")
    lines.push(
      `Peak RSS of regenerate: ${Math.round(small.rssKb / 1024)} MB on ${smallRows} tickets, ` +
        `${Math.round(bigRss / 1024)} MB on ${rows} (ratio ${(bigRss / small.rssKb).toFixed(2)}).`
    )
  }
  console.log(lines.join("\n"))
} finally {
  for (const name of databases) await admin.query(`DROP DATABASE IF EXISTS \`${name}\``).catch(() => undefined)
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1 })
  redis.on("error", () => {})
  const keys = await redis.keys(`${tag}:*`).catch(() => [])
  if (keys.length > 0) await redis.del(...keys).catch(() => undefined)
  redis.disconnect()
  if (Number(await scalar("SELECT @@GLOBAL.innodb_buffer_pool_size")) !== originalPool) {
    log(`restoring innodb_buffer_pool_size to ${mib(originalPool)} MiB`)
    await setBufferPool(originalPool)
  }
  await admin.end()
}
