// `npm run bench`: the regeneration against the single in-server UPDATE, side by side on one table.
//
//   npm run bench -- [--rows 1000000] [--small-rows 100000] [--repeat 1] [--buffer-pool-mib 2048|keep|2048,128]
//                    [--sweep 1,2,4,8] [--order abba|default] [--mysql mysql://root@127.0.0.1:3306]
//                    [--redis redis://127.0.0.1:6379] [--allow-remote-settings]
//
// Creates scratch databases, seeds them through our own seeders, then back to back on the same table:
// the single `UPDATE ticket SET token = LOWER(HEX(RANDOM_BYTES(16)))`, our `regenerate` with default flags,
// ours again, and the single UPDATE again (order abba, the default: every run of ours has a single UPDATE
// on each side and is compared with the mean of the two, so a drift of the host over the round does not
// decide the ratio; `--order default` runs the single UPDATE only first). Before every measured step the
// server is brought to the same quiet state (undo purged, dirty pages flushed), so one run does not bill
// the next. Reports rows/s, our ratio to the single UPDATE, peak RSS from the OS (GNU time), the buffer
// pool size, the seeding time against a raw multi-row INSERT of the same rows, and the peak RSS on a small
// table (memory must not grow with rows); then a verdict against the targets, per buffer pool measured
// (`--buffer-pool-mib` takes a list: each size is measured in turn).
//
// Server settings: the bench changes innodb_buffer_pool_size and, while quiescing, innodb_max_dirty_pages_pct
// with SET GLOBAL. It does so only on a loopback MySQL host unless --allow-remote-settings is given. The
// original values are written to ticket-tokens-bench-settings.json in the temp directory first, and are
// restored (with the scratch databases, Redis keys and temp files removed) on every way out: the end of the
// run, an error, SIGINT, SIGTERM or SIGHUP. After a `kill -9` the next run finds the file and restores them.
import { Redis } from "ioredis"
import * as mysql from "mysql2/promise"
import { spawn, spawnSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import * as Dns from "node:dns/promises"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"

const root = Path.resolve(Path.dirname(fileURLToPath(import.meta.url)), "..")
const mainJs = Path.join(root, "dist", "main.js")
const settingsFile = Path.join(Os.tmpdir(), "ticket-tokens-bench-settings.json")
const MiB = 1048576

// Options

const accepted = "--rows N (default 1000000), --small-rows N (0 skips the memory check; default 100000), " +
  "--repeat N (default 1), --buffer-pool-mib MiB[,MiB...]|keep (default 2048), --sweep C[,C...] (1-64), " +
  "--order abba|default (default abba), --mysql mysql://user[:password]@host[:port] (default $BENCH_MYSQL_URL or " +
  "mysql://root@127.0.0.1:3306), --redis redis://host[:port] (default $BENCH_REDIS_URL or " +
  "redis://127.0.0.1:6379), --allow-remote-settings, --help"

/** One line naming the problem and the accepted options, then exit 2. */
const usageError = (message) => {
  console.error(`bench: ${message}. Accepted options: ${accepted}`)
  process.exit(2)
}

const valued = new Set(["rows", "small-rows", "repeat", "buffer-pool-mib", "sweep", "order", "mysql", "redis"])
const flags = new Set(["allow-remote-settings", "help"])
const given = {}
{
  const argv = process.argv.slice(2)
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (arg === "-h") {
      given.help = true
      continue
    }
    const match = /^--([a-z-]+)(?:=(.*))?$/s.exec(arg)
    if (match === null) usageError(`unexpected argument "${arg}"`)
    const [, name, inline] = match
    if (flags.has(name)) {
      if (inline !== undefined) usageError(`--${name} takes no value`)
      given[name] = true
    } else if (valued.has(name)) {
      const value = inline ?? argv[++i]
      if (value === undefined || (inline === undefined && value.startsWith("--"))) {
        usageError(`--${name} needs a value`)
      }
      given[name] = value
    } else {
      usageError(`unknown option ${arg.replace(/=.*$/s, "")}`)
    }
  }
}
if (given.help) {
  console.log(`usage: npm run bench -- [options]\noptions: ${accepted.split(", --").join("\n         --")}`)
  process.exit(0)
}

const wholeNumber = (label, text, min, max = Number.MAX_SAFE_INTEGER) => {
  const digits = String(text).replaceAll("_", "")
  const n = Number(digits)
  if (!/^\d+$/.test(digits) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `of at least ${min}` : `from ${min} to ${max}`
    usageError(`${label} must be a whole number ${range}, not "${text}"`)
  }
  return n
}
const count = (name, fallback, min) => given[name] === undefined ? fallback : wholeNumber(`--${name}`, given[name], min)
const list = (name, fallback, parse) =>
  (given[name] ?? fallback).split(",").filter((s) => s !== "" || usageError(`--${name} has an empty entry`))
    .map(parse)
const parseUrl = (label, text, protocols) => {
  let url
  try {
    url = new URL(text)
  } catch {
    usageError(`${label} is not a URL: "${text}"`)
  }
  if (!protocols.includes(url.protocol)) {
    usageError(`${label} must start with ${protocols.map((p) => `${p}//`).join(" or ")}`)
  }
  if (url.hostname === "") usageError(`${label} has no host`)
  if (url.port !== "") wholeNumber(`the port of ${label}`, url.port, 1, 65535)
  return url
}

const rows = count("rows", 1_000_000, 1)
const smallRows = count("small-rows", 100_000, 0)
const repeat = count("repeat", 1, 1)
const totalMib = Math.floor(Os.totalmem() / MiB)
const bufferPools = list(
  "buffer-pool-mib",
  "2048",
  (s) => s === "keep" ? "keep" : wholeNumber("--buffer-pool-mib", s, 8, totalMib)
)
const sweep = given.sweep === undefined ? [] : list("sweep", "", (s) => wholeNumber("--sweep", s, 1, 64))
const order = given.order ?? "abba"
if (order !== "default" && order !== "abba") usageError(`--order must be default or abba, not "${order}"`)
const server = parseUrl(
  given.mysql === undefined ? "BENCH_MYSQL_URL" : "--mysql",
  given.mysql ?? process.env.BENCH_MYSQL_URL ?? "mysql://root@127.0.0.1:3306",
  ["mysql:", "mariadb:"]
)
const redisUrl = parseUrl(
  given.redis === undefined ? "BENCH_REDIS_URL" : "--redis",
  given.redis ?? process.env.BENCH_REDIS_URL ?? "redis://127.0.0.1:6379",
  ["redis:", "rediss:"]
).toString()
const allowRemoteSettings = given["allow-remote-settings"] === true

const host = server.hostname.replace(/^\[(.*)\]$/, "$1")
const port = Number(server.port || 3306)
const user = decodeURIComponent(server.username || "root")
const password = server.password === "" ? undefined : decodeURIComponent(server.password)

const isLoopback = (address) =>
  Net.isIPv4(address) ? address.startsWith("127.") : address === "::1" || /^::ffff:127\./i.test(address)
const loopback = await (Net.isIP(host) ? Promise.resolve([host]) : Dns.lookup(host, { all: true }).then(
  (found) => found.map((a) => a.address),
  (e) => usageError(`cannot resolve the MySQL host "${host}" (${e.code ?? e.message})`)
)).then((addresses) => addresses.length > 0 && addresses.every(isLoopback))
if (!loopback && !allowRemoteSettings) {
  usageError(
    `the MySQL host "${host}" is not a loopback address, and the bench changes server-wide settings ` +
      `(SET GLOBAL innodb_buffer_pool_size, innodb_max_dirty_pages_pct): pass --allow-remote-settings to allow it`
  )
}
/** Identifies the server in the settings file: every loopback spelling of one port is the same server. */
const serverKey = loopback ? `loopback:${port}` : `${host}:${port}`

/** The tool's default concurrency, from the build the bench runs. */
const regenerateDefaults = await import(pathToFileURL(Path.join(root, "dist", "Regenerate.js")).href).then(
  (m) => m.defaults,
  (e) => {
    console.error(`bench: cannot load dist/Regenerate.js (${e.message}); run npm run build (npm run bench does)`)
    process.exit(1)
  }
)
const defaultConcurrency = regenerateDefaults.concurrency

// Helpers

const log = (...parts) => console.error(`[bench ${new Date().toISOString().slice(11, 19)}]`, ...parts)
const tag = `ttbench_${Date.now().toString(36)}_${randomBytes(2).toString("hex")}`
const dbUrl = (name) => {
  const u = new URL(server)
  u.pathname = `/${name}`
  return u.toString()
}
const mib = (bytes) => Math.round(bytes / MiB)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

class Stopped extends Error {}
/** Everything the cleanup needs: set as the run goes. */
const state = {
  /** A signal came: no new step starts, and errors of the step in flight are expected. */
  stopping: false,
  /** @type {import("mysql2/promise").Connection | undefined} */
  admin: undefined,
  /** The server's settings before this run changed any, once read (and saved to the settings file). */
  originals: undefined,
  /** Running child processes (each the leader of its own process group) and their exits. */
  children: new Map(),
  tempFiles: new Set(),
  cleanup: undefined
}
const checkStopping = () => {
  if (state.stopping) throw new Stopped("stopped")
}
/** A pause inside a measured step: ends the step if a signal came. */
const pause = async (ms) => {
  await sleep(ms)
  checkStopping()
}

const connect = async () => {
  const conn = await mysql.createConnection({ host, port, user, password, multipleStatements: true })
  // A connection killed by the cleanup reports it here, not as an uncaught error.
  conn.on("error", () => undefined)
  return conn
}
const scalarOn = async (conn, sql, params = []) => Object.values((await conn.query(sql, params))[0][0] ?? {})[0]
const scalar = (sql, params = []) => scalarOn(state.admin, sql, params)
const status = async (name) =>
  Number(
    await scalar("SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = ?", [
      name.toUpperCase()
    ])
  )

/** The MySQL client programs get the password from a private defaults file, never on their command line. */
const clientArgs = () => {
  const args = []
  if (password !== undefined) {
    const file = Path.join(Os.tmpdir(), `${tag}.cnf`)
    if (!state.tempFiles.has(file)) {
      state.tempFiles.add(file)
      const quoted = password.replace(/[\\"]/g, "\\$&").replace(/\n/g, "\\n")
      Fs.writeFileSync(file, `[client]\npassword="${quoted}"\n`, { mode: 0o600, flag: "w" })
    }
    args.push(`--defaults-extra-file=${file}`) // must come first
  }
  return [...args, `-h${host}`, `-P${port}`, `-u${user}`]
}

/** GNU time, which reports a process's peak RSS: /usr/bin/time (Debian's `time` package) or on PATH (Nix). */
const gnuTime = ["/usr/bin/time", ...(process.env.PATH ?? "").split(":").map((dir) => Path.join(dir, "time"))]
  .find((file) => /^\d+$/.test(spawnSync(file, ["-f", "%M", "true"], { encoding: "utf8" }).stderr?.trim() ?? ""))
if (gnuTime === undefined) console.warn("peak RSS is not measured: GNU time is not installed (apt install time)")

/**
 * Starts a child in its own process group (so a signal stops it and GNU time together) and tracks it until it
 * exits. Resolves with the exit code, stdout and stderr (stdout not captured when stdio[1] is a file).
 */
const start = (command, argv, { env = {}, stdin = "ignore", stdout = "pipe" } = {}) => {
  checkStopping()
  const child = spawn(command, argv, {
    env: { ...process.env, ...env },
    stdio: [stdin, stdout, "pipe"],
    detached: true
  })
  let out = ""
  let err = ""
  child.stdout?.on("data", (d) => (out += d))
  child.stderr.on("data", (d) => (err += d))
  const exited = new Promise((resolve, reject) => {
    child.on("error", reject)
    child.on("close", (code, signal) => resolve({ code: code ?? signal, stdout: out, stderr: err }))
  }).finally(() => state.children.delete(child))
  state.children.set(child, exited.catch(() => undefined))
  return exited
}

/** Runs a command; returns wall seconds, peak RSS (KB, from GNU time) and output. */
const run = async (command, argv, { env = {}, stdin } = {}) => {
  const timeFile = Path.join(Os.tmpdir(), `${tag}.time`)
  state.tempFiles.add(timeFile)
  const useTime = gnuTime !== undefined
  const [cmd, cmdArgs] = useTime ? [gnuTime, ["-f", "%M", "-o", timeFile, command, ...argv]] : [command, argv]
  const input = stdin === undefined ? "ignore" : Fs.openSync(stdin, "r")
  const began = performance.now()
  let result
  try {
    result = await start(cmd, cmdArgs, { env, stdin: input })
  } finally {
    if (typeof input === "number") Fs.closeSync(input)
  }
  const seconds = (performance.now() - began) / 1000
  checkStopping()
  if (result.code !== 0) {
    throw new Error(`${command} ${argv.join(" ")} exited ${result.code}\n${result.stderr.slice(-2000)}`)
  }
  const rssKb = useTime ? Number(Fs.readFileSync(timeFile, "utf8").trim().split("\n").pop()) : NaN
  return { seconds, rssKb, stdout: result.stdout, stderr: result.stderr }
}

const cli = (db, argv, env = {}) =>
  run(process.execPath, [mainJs, ...argv], {
    env: { DATABASE_URL: dbUrl(db), REDIS_URL: redisUrl, REDIS_PREFIX: tag, ...env }
  })

/** Waits until InnoDB has purged old row versions and flushed dirty pages: every measurement starts alike. */
const quiesce = async () => {
  const began = Date.now()
  while ((await status("Innodb_history_list_length")) > 1000 && Date.now() - began < 180_000) await pause(500)
  checkStopping()
  await state.admin.query("SET GLOBAL innodb_max_dirty_pages_pct = 0")
  try {
    while ((await status("Innodb_buffer_pool_pages_dirty")) > 500 && Date.now() - began < 300_000) await pause(500)
  } finally {
    // After a signal the cleanup restores it (and this connection may be gone).
    if (!state.stopping) {
      await state.admin.query("SET GLOBAL innodb_max_dirty_pages_pct = ?", [
        state.originals.innodb_max_dirty_pages_pct
      ])
    }
  }
}

/** Resizes the buffer pool online and waits until the server reports the new size. */
const setBufferPool = async (conn, bytes, settle) => {
  await conn.query("SET GLOBAL innodb_buffer_pool_size = ?", [bytes])
  const began = Date.now()
  while (Number(await scalarOn(conn, "SELECT @@GLOBAL.innodb_buffer_pool_size")) !== bytes) {
    if (Date.now() - began > 120_000) {
      log(`innodb_buffer_pool_size did not reach ${mib(bytes)} MiB within 2 minutes`)
      break
    }
    await sleep(500)
  }
  if (settle) await pause(2000)
}

// Server settings, scratch databases, Redis keys, temp files: recorded first, restored on every way out

const settingNames = ["innodb_buffer_pool_size", "innodb_max_dirty_pages_pct"]
const readSettings = async (conn) => {
  const values = {}
  for (const name of settingNames) values[name] = Number(await scalarOn(conn, `SELECT @@GLOBAL.${name}`))
  return values
}
/** Sets back every setting that differs; returns what it changed, for the log. */
const restoreSettings = async (conn, values) => {
  const done = []
  for (const name of settingNames) {
    const wanted = values[name]
    if (typeof wanted !== "number" || !Number.isFinite(wanted)) continue
    const now = Number(await scalarOn(conn, `SELECT @@GLOBAL.${name}`))
    if (now === wanted) continue
    if (name === "innodb_buffer_pool_size") {
      await setBufferPool(conn, wanted, false)
      done.push(`${name} ${mib(now)} -> ${mib(wanted)} MiB`)
    } else {
      await conn.query(`SET GLOBAL ${name} = ?`, [wanted])
      done.push(`${name} ${now} -> ${wanted}`)
    }
  }
  return done
}
const writeSettingsFile = (values) => {
  const temp = `${settingsFile}.${process.pid}`
  const record = { pid: process.pid, tag, server: serverKey, startedAt: new Date().toISOString(), settings: values }
  Fs.writeFileSync(temp, JSON.stringify(record, null, 2) + "\n")
  Fs.renameSync(temp, settingsFile)
}
const likeEscape = (s) => s.replace(/[\\_%]/g, "\\$&")
const dropScratchDatabases = async (conn, prefix) => {
  const [found] = await conn.query("SHOW DATABASES LIKE ?", [`${likeEscape(prefix)}\\_%`])
  const names = found.map((row) => Object.values(row)[0]).filter((name) => name.startsWith(`${prefix}_`))
  for (const name of names) await conn.query(`DROP DATABASE IF EXISTS \`${name}\``)
  return names.length
}
const deleteRedisKeys = async (prefix) => {
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1, lazyConnect: true })
  redis.on("error", () => undefined)
  try {
    await redis.connect()
    const keys = await redis.keys(`${prefix}:*`)
    if (keys.length > 0) await redis.del(...keys)
    return keys.length
  } finally {
    redis.disconnect()
  }
}
const removeTempFiles = (prefix) => {
  for (const name of Fs.readdirSync(Os.tmpdir())) {
    if (name.startsWith(`${prefix}.`)) Fs.rmSync(Path.join(Os.tmpdir(), name), { force: true })
  }
}

/** A run killed with -9 left its settings file: put the server back before this run reads its settings. */
const recoverKilledRun = async (conn) => {
  let text
  try {
    text = Fs.readFileSync(settingsFile, "utf8")
  } catch (e) {
    if (e.code === "ENOENT") return
    throw e
  }
  let saved
  try {
    saved = JSON.parse(text)
  } catch {
    console.error(`bench: ${settingsFile} is not JSON; check the server's settings by hand, then delete it`)
    process.exit(1)
  }
  if (saved.pid !== process.pid && processIsBench(saved.pid)) {
    console.error(
      `bench: another bench run (pid ${saved.pid}, started ${saved.startedAt}) has changed the server's settings ` +
        `and is still running; wait for it (or stop it with Ctrl-C / kill ${saved.pid}, which restores them)`
    )
    process.exit(1)
  }
  const values = Object.entries(saved.settings ?? {}).map(([k, v]) => `${k} = ${v}`).join(", ")
  if (saved.server !== serverKey) {
    console.error(
      `bench: a killed bench run left ${settingsFile} for another server (${saved.server}); restore its ` +
        `settings there with SET GLOBAL ${values}, then delete the file`
    )
    process.exit(1)
  }
  const restored = await restoreSettings(conn, saved.settings ?? {})
  let dropped = 0
  let keys = 0
  if (typeof saved.tag === "string" && /^ttbench_[a-z0-9]+_[0-9a-f]{4}$/.test(saved.tag)) {
    dropped = await dropScratchDatabases(conn, saved.tag)
    keys = await deleteRedisKeys(saved.tag).catch(() => 0)
    removeTempFiles(saved.tag)
  }
  Fs.rmSync(settingsFile, { force: true })
  log(
    `a previous bench run (pid ${saved.pid}) was killed mid-way: restored ${
      restored.length === 0 ? "nothing (settings already back)" : restored.join(", ")
    }, dropped ${dropped} scratch databases and ${keys} Redis keys, deleted ${settingsFile}`
  )
}
const processIsBench = (pid) => {
  if (!Number.isInteger(pid) || pid <= 0) return false
  try {
    process.kill(pid, 0)
  } catch (e) {
    if (e.code !== "EPERM") return false
  }
  try {
    return Fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("run.mjs")
  } catch {
    return true // alive, and no /proc to tell what it is
  }
}

/** Stops the running children: SIGTERM to each process group, SIGKILL after 15 s. */
const stopChildren = async () => {
  const signalAll = (signal) => {
    for (const child of state.children.keys()) {
      try {
        process.kill(-child.pid, signal)
      } catch {
        // already gone
      }
    }
  }
  if (state.children.size === 0) return
  signalAll("SIGTERM")
  const all = Promise.all(state.children.values())
  if ((await Promise.race([all.then(() => true), sleep(15_000).then(() => false)])) === false) {
    signalAll("SIGKILL")
    await all
  }
}

/** Idempotent: a second call (a signal during the normal cleanup) waits for the first. */
const cleanup = () => (state.cleanup ??= doCleanup())
const doCleanup = async () => {
  let settingsBack = false
  await stopChildren().catch((e) => log(`stopping the child processes: ${e.message}`))
  let conn
  try {
    conn = await connect()
  } catch (e) {
    log(`cannot connect to MySQL to clean up: ${e.message}`)
  }
  if (conn !== undefined) {
    // The step in flight (a single UPDATE can run for minutes) must not hold its table or the buffer pool.
    if (state.admin !== undefined) {
      if (state.stopping) await conn.query(`KILL CONNECTION ${Number(state.admin.threadId)}`).catch(() => undefined)
      state.admin.destroy()
      state.admin = undefined
    }
    if (state.originals !== undefined) {
      try {
        for (const change of await restoreSettings(conn, state.originals)) log(`restored ${change}`)
        settingsBack = true
      } catch (e) {
        log(`restoring the server's settings failed: ${e.message}`)
      }
    }
    await dropScratchDatabases(conn, tag).catch((e) => log(`dropping the scratch databases failed: ${e.message}`))
    await conn.end().catch(() => undefined)
  }
  await deleteRedisKeys(tag).catch((e) => log(`deleting the Redis keys failed: ${e.message}`))
  try {
    removeTempFiles(tag)
  } catch (e) {
    log(`removing the temp files failed: ${e.message}`)
  }
  // Only this run's own file: before it is written, the file (if any) is another run's.
  if (state.originals === undefined) return
  if (settingsBack) Fs.rmSync(settingsFile, { force: true })
  else {
    log(`the original settings stay in ${settingsFile}: the next bench run restores them`)
  }
}

const onSignal = (signal, code) => {
  if (state.stopping) {
    log(`${signal} again: still cleaning up`)
    return
  }
  state.stopping = true
  log(`${signal}: stopping; restoring the server's settings and dropping the scratch databases`)
  cleanup().finally(() => process.exit(code))
}
process.on("SIGINT", () => onSignal("SIGINT", 130))
process.on("SIGTERM", () => onSignal("SIGTERM", 143))
process.on("SIGHUP", () => onSignal("SIGHUP", 129))

// Steps

const createDatabase = async (name) => {
  checkStopping()
  await state.admin.query(`CREATE DATABASE \`${name}\``)
  await cli(name, ["migrate"])
}

const seed = async (name, tickets) => {
  await cli(name, ["seed", "users", "--count", "1000"])
  await cli(name, ["seed", "orders", "--count", "10000"])
  await quiesce()
  return cli(name, ["seed", "tickets", "--count", String(tickets)])
}

/**
 * The same ticket rows loaded by the mariadb client as plain multi-row INSERTs. mariadb-dump fills each
 * INSERT up to --net-buffer-length (240,000 bytes); a seeded ticket row is about 205 bytes of SQL, so a
 * statement holds about 1,170 rows (the log says how many), where our seeder sends 1,000 rows per INSERT.
 */
const rawInsert = async (from, into) => {
  const file = Path.join(Os.tmpdir(), `${tag}.sql`)
  state.tempFiles.add(file)
  const out = Fs.openSync(file, "w")
  let dump
  try {
    dump = await start("mariadb-dump", [
      ...clientArgs(),
      "--no-create-info",
      "--skip-triggers",
      "--skip-add-locks",
      "--skip-disable-keys",
      "--compact",
      "--extended-insert",
      "--net-buffer-length=240000",
      from,
      "ticket"
    ], { stdout: out })
  } finally {
    Fs.closeSync(out)
  }
  checkStopping()
  if (dump.code !== 0) throw new Error(`mariadb-dump exited ${dump.code}\n${dump.stderr.slice(-2000)}`)
  const statements = Number(spawnSync("grep", ["-c", "^INSERT INTO", file], { encoding: "utf8" }).stdout)
  if (statements > 0) {
    log(`the dump has ${statements} INSERT statements, about ${Math.round(rows / statements)} rows each`)
  }
  // Same checks as our seeder: unique and foreign keys stay on (the dump's header would turn them off).
  await state.admin.query(`INSERT INTO \`${into}\`.\`user\` SELECT * FROM \`${from}\`.\`user\``)
  await state.admin.query(`INSERT INTO \`${into}\`.\`order\` SELECT * FROM \`${from}\`.\`order\``)
  await quiesce()
  const result = await run("mariadb", [...clientArgs(), into], { stdin: file })
  Fs.rmSync(file, { force: true })
  return result
}

const singleUpdate = async (db) => {
  await quiesce()
  const began = performance.now()
  const [result] = await state.admin.query(
    `UPDATE \`${db}\`.\`ticket\` SET \`token\` = LOWER(HEX(RANDOM_BYTES(16)))`
  )
  checkStopping()
  return { seconds: (performance.now() - began) / 1000, rows: result.affectedRows }
}

const ours = async (db, extra = []) => {
  await quiesce()
  const result = await cli(db, ["regenerate", "--json", "--restart", ...extra])
  const summary = JSON.parse(result.stdout.trim())
  if (summary.status !== "completed") throw new Error(`regenerate ended ${summary.status}`)
  return { ...result, rows: summary.rotated, runSeconds: summary.seconds }
}

/**
 * One round on a fresh table. Default order: single UPDATE, defaults, again, the sweep. abba: single UPDATE,
 * ours, ours, single UPDATE, ours, ours, single UPDATE... (the sweep continues the chain), so each run of
 * ours sits between two single UPDATEs, `before` and `after` (indexes into `singles`).
 */
const round = async (r) => {
  const big = `${tag}_${r}`
  const raw = `${tag}_${r}_raw`
  await createDatabase(big)
  await createDatabase(raw)
  log(`round ${r}: seeding ${rows} tickets with our seeder`)
  const seeded = await seed(big, rows)
  log(`round ${r}: the same rows as a raw multi-row INSERT`)
  const rawLoad = await rawInsert(big, raw)
  await state.admin.query(`DROP DATABASE \`${raw}\``)

  const planned = [
    { step: "regenerate (defaults)", extra: [], concurrency: defaultConcurrency },
    { step: "regenerate again", extra: [], concurrency: defaultConcurrency },
    ...sweep.map((c) => ({
      step: `regenerate --concurrency ${c}`,
      extra: ["--concurrency", String(c)],
      concurrency: c
    }))
  ]
  const singles = []
  const runs = []
  const single = async () => {
    log(`round ${r}: single UPDATE`)
    singles.push(await singleUpdate(big))
  }
  const one = async (p, before, after) => {
    log(`round ${r}: ${p.step}`)
    runs.push({ ...p, before, after, result: await ours(big, p.extra) })
  }
  await single()
  if (order === "abba") {
    for (let k = 0; k < planned.length; k += 2) {
      const before = singles.length - 1
      await one(planned[k], before, before + 1)
      if (k + 1 < planned.length) await one(planned[k + 1], before, before + 1)
      await single()
    }
  } else {
    for (const p of planned) await one(p, 0, undefined)
  }
  await state.admin.query(`DROP DATABASE \`${big}\``)
  return { seeded, rawLoad, singles, runs }
}

// Report

const rate = (n, s) => Math.round(n / s)
/** The single UPDATE's rows/s a run of ours is compared with: its neighbour, or the mean of the two. */
const baseRate = (x, run) => {
  const around = [x.singles[run.before], x.singles[run.after]].filter((s) => s !== undefined)
  return around.reduce((sum, s) => sum + rate(s.rows, s.seconds), 0) / around.length
}
const ratioOf = (x, run, seconds = run.result.runSeconds) => rate(run.result.rows, seconds) / baseRate(x, run)
const mbOf = (kb) => Math.round(kb / 1024)
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2
}

/** The tables as before (the docs copy them). */
const tables = (config) => {
  const lines = []
  lines.push(
    `## ${rows} tickets, MariaDB ${config.version}, buffer pool ${config.poolMib} MiB, ${Os.cpus().length} CPUs`
  )
  lines.push("")
  lines.push("| round | step | seconds | rows/s | vs single UPDATE | peak RSS |")
  lines.push("| --- | --- | ---: | ---: | ---: | ---: |")
  config.rounds.forEach((x, i) => {
    const row = (step, seconds, n, base, rss) =>
      lines.push(
        `| ${i + 1} | ${step} | ${seconds.toFixed(1)} | ${rate(n, seconds)} | ${
          (rate(n, seconds) / base).toFixed(2)
        }x | ${Number.isNaN(rss) ? "-" : `${mbOf(rss)} MB`} |`
      )
    const firstRate = rate(x.singles[0].rows, x.singles[0].seconds)
    const singleRow = (s) => row("single in-server UPDATE", s.seconds, s.rows, firstRate, NaN)
    const oursRow = (run) => row(run.step, run.result.runSeconds, run.result.rows, baseRate(x, run), run.result.rssKb)
    singleRow(x.singles[0])
    x.runs.forEach((run, k) => {
      oursRow(run)
      // abba: the single UPDATE after a pair (or after the last run) is listed where it ran.
      if (run.after !== undefined && (k % 2 === 1 || k === x.runs.length - 1)) singleRow(x.singles[run.after])
    })
    const first = x.runs[0]
    row(
      "regenerate (defaults), wall clock incl. startup",
      first.result.seconds,
      first.result.rows,
      baseRate(x, first),
      first.result.rssKb
    )
  })
  if (order === "abba") {
    lines.push("")
    lines.push(
      "Order abba: each regenerate is compared with the mean rows/s of the single UPDATEs run just before and " +
        "after it; each single UPDATE with the round's first."
    )
  }
  lines.push("")
  lines.push("| round | seeding | seconds | rows/s | vs raw INSERT |")
  lines.push("| --- | --- | ---: | ---: | ---: |")
  config.rounds.forEach((x, i) => {
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
  if (config.small !== undefined && !Number.isNaN(config.small.rssKb) && !Number.isNaN(config.bigRssKb)) {
    lines.push("")
    lines.push(
      `Peak RSS of regenerate: ${mbOf(config.small.rssKb)} MB on ${smallRows} tickets, ` +
        `${mbOf(config.bigRssKb)} MB on ${rows} (ratio ${(config.bigRssKb / config.small.rssKb).toFixed(2)}).`
    )
  }
  return lines
}

/** The targets: ratios by median per buffer pool, memory in every run, seeding reported. */
const verdict = (configs) => {
  const lines = ["", "## Verdict", ""]
  const byPool = new Map()
  for (const c of configs) byPool.set(c.poolMib, [...(byPool.get(c.poolMib) ?? []), c])
  const medians = new Map()
  for (const [poolMib, cs] of byPool) {
    const ratios = cs.flatMap((c) =>
      c.rounds.flatMap((x) =>
        x.runs.filter((run) => run.concurrency === defaultConcurrency).map((run) => ratioOf(x, run))
      )
    )
    const m = median(ratios)
    medians.set(poolMib, m)
    lines.push(
      `Buffer pool ${poolMib} MiB: regenerate at the default concurrency (${defaultConcurrency}) against the single ` +
        `UPDATE, ${ratios.length} runs: ${ratios.map((r) => `${r.toFixed(2)}x`).join(" ")}; median ${m.toFixed(2)}x, ${
          ratios.filter((r) => r >= 0.9).length
        } of ${ratios.length} at 0.9x or more.`
    )
  }
  lines.push("")
  const mark = (ok) => ok ? "PASS" : "FAIL"
  const at2g = medians.get(2048)
  lines.push(
    at2g === undefined
      ? "NOT MEASURED  median >= 0.9x the single UPDATE with a 2 GiB buffer pool (add --buffer-pool-mib 2048)"
      : `${mark(at2g >= 0.9)}  median >= 0.9x the single UPDATE with a 2 GiB buffer pool: ${at2g.toFixed(2)}x`
  )
  const at128 = medians.get(128)
  if (at128 !== undefined) {
    lines.push(
      `${mark(at128 > 1)}  median > 1.0x the single UPDATE with a 128 MiB buffer pool: ${at128.toFixed(2)}x`
    )
  }
  const rss = configs.flatMap((c) => [
    ...c.rounds.flatMap((x) => x.runs.map((run) => run.result.rssKb)),
    ...(c.small === undefined ? [] : [c.small.rssKb])
  ]).filter((kb) => !Number.isNaN(kb))
  lines.push(
    rss.length === 0
      ? "NOT MEASURED  peak RSS <= 150 MB in every run (GNU time is not installed)"
      : `${mark(rss.every((kb) => kb / 1024 <= 150))}  peak RSS <= 150 MB in every run: ${mbOf(Math.min(...rss))}-${
        mbOf(Math.max(...rss))
      } MB over ${rss.length} runs`
  )
  for (const c of configs) {
    if (c.small === undefined || Number.isNaN(c.small.rssKb) || Number.isNaN(c.bigRssKb)) continue
    const ratio = c.bigRssKb / c.small.rssKb
    lines.push(
      `${mark(ratio <= 1.1 && ratio >= 1 / 1.1)}  peak RSS on ${smallRows} vs ${rows} tickets within 10 % ` +
        `(buffer pool ${c.poolMib} MiB): ${mbOf(c.small.rssKb)} vs ${mbOf(c.bigRssKb)} MB, ratio ${ratio.toFixed(2)}`
    )
  }
  for (const [poolMib, cs] of byPool) {
    const seeding = cs.flatMap((c) => c.rounds.map((x) => x.rawLoad.seconds / x.seeded.seconds))
    lines.push(
      `REPORT  seeding vs raw INSERT (buffer pool ${poolMib} MiB): ${
        seeding.map((r) => `${r.toFixed(2)}x`).join(" ")
      } (median ${median(seeding).toFixed(2)}x)`
    )
  }
  return lines
}

// The run

const measure = async () => {
  const poolMib = mib(Number(await scalar("SELECT @@GLOBAL.innodb_buffer_pool_size")))
  const version = await scalar("SELECT VERSION()")
  log(`MariaDB ${version}, buffer pool ${poolMib} MiB, ${Os.cpus().length} CPUs, node ${process.version}`)
  const rounds = []
  for (let r = 1; r <= repeat; r++) rounds.push(await round(r))
  let small
  if (smallRows > 0) {
    const name = `${tag}_small`
    await createDatabase(name)
    log(`memory check: regenerate on ${smallRows} tickets`)
    await seed(name, smallRows)
    small = await ours(name)
    await state.admin.query(`DROP DATABASE \`${name}\``)
  }
  const bigRssKb = Math.max(
    ...rounds.flatMap((x) => x.runs.filter((run) => run.concurrency === defaultConcurrency && run.extra.length === 0))
      .map((run) => run.result.rssKb)
  )
  return { poolMib, version, rounds, small, bigRssKb }
}

const main = async () => {
  state.admin = await connect()
  await recoverKilledRun(state.admin)
  checkStopping()
  // Recorded before the first SET GLOBAL, so that even a kill -9 leaves them for the next run.
  const originals = await readSettings(state.admin)
  writeSettingsFile(originals)
  state.originals = originals
  if (order === "abba") log("order abba: single UPDATE, ours, ours, single UPDATE in each round")
  const configs = []
  for (const entry of bufferPools) {
    const bytes = entry === "keep" ? originals.innodb_buffer_pool_size : entry * MiB
    if (Number(await scalar("SELECT @@GLOBAL.innodb_buffer_pool_size")) !== bytes) {
      log(
        `setting innodb_buffer_pool_size to ${mib(bytes)} MiB for this run (was ${
          mib(originals.innodb_buffer_pool_size)
        } MiB; restored at the end)`
      )
      await setBufferPool(state.admin, bytes, true)
    }
    const config = await measure()
    console.log((configs.length > 0 ? "\n" : "") + tables(config).join("\n"))
    configs.push(config)
  }
  console.log(verdict(configs).join("\n"))
}

await main().then(
  () => cleanup(),
  async (e) => {
    if (state.stopping) return // the signal handler cleans up and exits
    console.error(e)
    process.exitCode = 1
    await cleanup()
  }
)
