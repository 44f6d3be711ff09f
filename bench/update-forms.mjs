// Compares UPDATE forms for one batch of (id, token) pairs on a MySQL/MariaDB ticket table, back to back.
//   node bench/update-forms.mjs <database-url> [--batches 200] [--batch-size 1000] [--concurrency 1,4]
// Each form rotates the same keyset batches of the table (tokens changed, updated_at set).
import * as mysql from "mysql2/promise"
import { randomBytes } from "node:crypto"

const args = process.argv.slice(2)
const url = new URL(args[0] ?? "mysql://root@127.0.0.1:3306/tt_b")
const opt = (name, fallback) => {
  const i = args.indexOf(`--${name}`)
  return i === -1 ? fallback : args[i + 1]
}
const batches = Number(opt("batches", 200))
const batchSize = Number(opt("batch-size", 1000))
const concurrencies = String(opt("concurrency", "1,4")).split(",").map(Number)
const only = opt("forms", undefined)?.split(",")

const tokens = (n) => {
  const hex = randomBytes(16 * n).toString("hex")
  return Array.from({ length: n }, (_, i) => hex.slice(i * 32, i * 32 + 32))
}
const now = () => new Date().toISOString().replace("T", " ").replace("Z", "000")

const forms = {
  "join-union-all": (ids, toks) => ({
    sql: "UPDATE `ticket` AS t JOIN (SELECT ? AS `id`, ? AS `token`" + " UNION ALL SELECT ?, ?".repeat(ids.length - 1) +
      ") AS v ON t.`id` = v.`id` SET t.`token` = v.`token`, t.`updated_at` = ?",
    params: [...ids.flatMap((id, i) => [id, toks[i]]), now()]
  }),
  "join-json-table": (ids, toks) => ({
    sql:
      "UPDATE `ticket` AS t JOIN JSON_TABLE(?, '$[*]' COLUMNS (`id` CHAR(32) PATH '$[0]', `token` VARCHAR(255) PATH '$[1]')) AS v " +
      "ON t.`id` = v.`id` SET t.`token` = v.`token`, t.`updated_at` = ?",
    params: [JSON.stringify(ids.map((id, i) => [id, toks[i]])), now()]
  }),
  "join-values (MariaDB)": (ids, toks) => ({
    sql: "UPDATE `ticket` AS t JOIN (SELECT ? AS `id`, ? AS `token` UNION ALL VALUES " +
      new Array(ids.length - 1).fill("(?, ?)").join(", ") +
      ") AS v ON t.`id` = v.`id` SET t.`token` = v.`token`, t.`updated_at` = ?",
    params: [...ids.flatMap((id, i) => [id, toks[i]]), now()]
  }),
  "subquery-union-all": (ids, toks) => ({
    sql: "UPDATE `ticket` AS t SET t.`token` = (SELECT v.`token` FROM (SELECT ? AS `id`, ? AS `token`" +
      " UNION ALL SELECT ?, ?".repeat(ids.length - 1) +
      ") AS v WHERE v.`id` = t.`id`), t.`updated_at` = ? WHERE t.`id` IN (" +
      new Array(ids.length).fill("?").join(", ") + ")",
    params: [...ids.flatMap((id, i) => [id, toks[i]]), now(), ...ids]
  }),
  "case (Django bulk_update)": (ids, toks) => ({
    sql: "UPDATE `ticket` SET `token` = CASE `id`" + " WHEN ? THEN ?".repeat(ids.length) +
      " END, `updated_at` = ? WHERE `id` IN (" +
      new Array(ids.length).fill("?").join(", ") + ")",
    params: [...ids.flatMap((id, i) => [id, toks[i]]), now(), ...ids]
  })
}

const pool = mysql.createPool({
  multipleStatements: true,
  host: url.hostname,
  port: Number(url.port || 3306),
  user: decodeURIComponent(url.username || "root"),
  password: decodeURIComponent(url.password),
  database: url.pathname.slice(1),
  connectionLimit: 16,
  maxIdle: 16
})

// CPU time of the local server process (Linux), to compare forms by server work per row, not only by speed.
import { execSync } from "node:child_process"
import { readFileSync } from "node:fs"
const serverPid = (() => {
  try {
    return execSync("pgrep -x mariadbd || pgrep -x mysqld").toString().trim().split("\n")[0]
  } catch {
    return undefined
  }
})()
const serverCpuSeconds = () => {
  if (serverPid === undefined) return NaN
  const fields = readFileSync(`/proc/${serverPid}/stat`, "utf8").split(") ")[1].split(" ")
  return (Number(fields[11]) + Number(fields[12])) / 100
}

/** Waits until InnoDB has purged the previous form's old row versions, so that no form pays for another. */
const quiesce = async () => {
  const started = Date.now()
  for (;;) {
    const [[row]] = await pool.query(
      "SELECT VARIABLE_VALUE AS v FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'INNODB_HISTORY_LIST_LENGTH'"
    )
    if (Number(row.v) < 1000 || Date.now() - started > 120_000) return
    await new Promise((r) => setTimeout(r, 250))
  }
}

const pages = []
let cursor = ""
for (let b = 0; b < batches; b++) {
  const [rows] = await pool.query(`SELECT id FROM ticket WHERE id > ? ORDER BY id LIMIT ${batchSize}`, [cursor])
  if (rows.length === 0) break
  pages.push(rows.map((r) => r.id))
  cursor = rows[rows.length - 1].id
}
const rowsTotal = pages.reduce((n, p) => n + p.length, 0)
console.log(`${pages.length} batches of ${batchSize} (${rowsTotal} rows) from ${url.pathname.slice(1)}`)

/** The range form with every token in one binary parameter, `stride` bytes each, cut by `SUBSTRING`. */
const rangeFromBytes = async (conn, ids, toks, encoding, stride, wrap) => {
  const marker = `${process.pid}-${markers++}`
  const cut = `SUBSTRING(?, IF((@i := IF(@b = ?, @i + 1, (@b := ?) IS NOT NULL)) <= ?, @i * ${stride} - ${
    stride - 1
  }, NULL), ${stride})`
  return (await conn.execute(
    `UPDATE \`ticket\` SET \`token\` = ${wrap.replace("?", cut)}, \`updated_at\` = ? WHERE \`id\` >= ? AND \`id\` <= ?`,
    [Buffer.from(toks.join(""), encoding), marker, marker, toks.length, now(), ids[0], ids[ids.length - 1]]
  ))[0]
}

// Forms that need more than one statement, or a session variable, on their connection.
let markers = 0
const custom = {
  // The range form: the page is every ticket in [first, last], so one autocommit range UPDATE gives the
  // i-th row the i-th token (picked by ELT out of one parameter per token), counted by a session variable
  // that restarts on the first row of each execution (marked by a value never used before).
  "range-counter-elt": async (conn, ids, toks) => {
    const marker = `${process.pid}-${markers++}`
    return (await conn.execute(
      "UPDATE `ticket` SET `token` = ELT(@i := IF(@b = ?, @i + 1, (@b := ?) IS NOT NULL), " +
        new Array(ids.length).fill("?").join(", ") + "), `updated_at` = ? WHERE `id` >= ? AND `id` <= ?",
      [marker, marker, ...toks, now(), ids[0], ids[ids.length - 1]]
    ))[0]
  },
  // The same range in an explicit transaction that resets the counter and checks the count before COMMIT.
  "range-counter-elt, transaction": async (conn, ids, toks) => {
    await conn.query("BEGIN")
    await conn.query("SET @i = 0")
    const [result] = await conn.execute(
      "UPDATE `ticket` SET `token` = COALESCE(ELT(@i := @i + 1, " + new Array(ids.length).fill("?").join(", ") +
        "), `token`), `updated_at` = ? WHERE `id` >= ? AND `id` <= ?",
      [...toks, now(), ids[0], ids[ids.length - 1]]
    )
    await conn.query(result.affectedRows === ids.length ? "COMMIT" : "ROLLBACK")
    return result
  },
  // The same range, the tokens cut out of one concatenated parameter instead of picked by ELT.
  "range-counter-substring": async (conn, ids, toks) => {
    await conn.query("SET @i = 0")
    return (await conn.execute(
      "UPDATE `ticket` SET `token` = SUBSTRING(?, (@i := @i + 1) * 32 - 31, 32), `updated_at` = ? " +
        "WHERE `id` >= ? AND `id` <= ?",
      [toks.join(""), now(), ids[0], ids[ids.length - 1]]
    ))[0]
  },
  // The chosen form when the scope is on the ticket alone: the same range, the tokens cut out of one binary
  // parameter (byte offsets, not characters); a row past the last token gets NULL, as with ELT.
  "range-counter-substring-binary (chosen)": (conn, ids, toks) => rangeFromBytes(conn, ids, toks, "latin1", 32, "?"),
  // The same, with the tokens' 16 raw bytes each in the parameter and hex-encoded by the server.
  "range-counter-hex-binary": (conn, ids, toks) => rangeFromBytes(conn, ids, toks, "hex", 16, "LOWER(HEX(?))"),
  // The same counter, the rows found by key (`IN` list) rather than walked as a range.
  "in-list-counter-substring": async (conn, ids, toks) => {
    const [results] = await conn.query(
      "SET @i = 0; UPDATE `ticket` SET `token` = SUBSTRING(?, (@i := @i + 1) * 32 - 31, 32), `updated_at` = ? WHERE `id` IN (?)",
      [toks.join(""), now(), ids]
    )
    return results[1]
  },
  // A per-connection temporary table: a multi-row INSERT (one query block), then UPDATE … JOIN, in one transaction.
  "temporary-table": async (conn, ids, toks) => {
    await conn.query(
      "CREATE TEMPORARY TABLE IF NOT EXISTS `batch` (`id` CHAR(32) PRIMARY KEY, `token` VARCHAR(255)) ENGINE=MEMORY"
    )
    await conn.query("BEGIN")
    await conn.execute(
      "INSERT INTO `batch` VALUES " + new Array(ids.length).fill("(?, ?)").join(", "),
      ids.flatMap((id, i) => [id, toks[i]])
    )
    const [result] = await conn.execute(
      "UPDATE `ticket` AS t JOIN `batch` AS v ON t.`id` = v.`id` SET t.`token` = v.`token`, t.`updated_at` = ?",
      [now()]
    )
    await conn.query("COMMIT")
    await conn.query("DELETE FROM `batch`")
    return result
  },
  // Reference: the single in-server UPDATE's per-row work (server-made tokens) on the same ranges.
  "range-server-tokens (reference, not CSPRNG-by-us)": async (conn, ids) =>
    (await conn.execute(
      "UPDATE `ticket` SET `token` = LOWER(HEX(RANDOM_BYTES(16))), `updated_at` = ? WHERE `id` >= ? AND `id` <= ?",
      [now(), ids[0], ids[ids.length - 1]]
    ))[0]
}

for (const concurrency of concurrencies) {
  for (const [name, build] of [...Object.entries(forms), ...Object.entries(custom)]) {
    if (only && !only.some((o) => name.startsWith(o))) continue
    await quiesce()
    let next = 0
    const start = performance.now()
    const cpu0 = serverCpuSeconds()
    const client0 = process.cpuUsage()
    try {
      await Promise.all(Array.from({ length: concurrency }, async () => {
        const conn = await pool.getConnection()
        try {
          while (next < pages.length) {
            const ids = pages[next++]
            const toks = tokens(ids.length)
            let result
            if (name in custom) result = await build(conn, ids, toks)
            else {
              const { params, sql } = build(ids, toks)
              result = (await conn.execute(sql, params))[0]
            }
            if (result.affectedRows !== ids.length) {
              throw new Error(`${name}: ${result.affectedRows} rows changed of ${ids.length}`)
            }
          }
        } finally {
          conn.release()
        }
      }))
      const seconds = (performance.now() - start) / 1000
      const cpuPer100k = ((serverCpuSeconds() - cpu0) * 100_000) / rowsTotal
      const client = process.cpuUsage(client0)
      const clientPer100k = ((client.user + client.system) / 1e6) * 100_000 / rowsTotal
      console.log(
        `concurrency ${concurrency}  ${name.padEnd(26)} ${
          Math.round(rowsTotal / seconds).toString().padStart(7)
        } rows/s` +
          `  server CPU ${cpuPer100k.toFixed(2)} s, client CPU ${clientPer100k.toFixed(2)} s per 100k rows`
      )
    } catch (error) {
      console.log(`concurrency ${concurrency}  ${name.padEnd(26)} failed: ${error.message}`)
    }
  }
}
await pool.end()
