/**
 * A private MariaDB for the tests that need server settings of their own (TLS required, sessions that start
 * with autocommit off, a server default SQL mode that is not strict): its own data directory and a spare
 * port, so the shared server's settings are never touched. Skips loudly when the server binaries are not
 * installed, unless REQUIRE_SERVICES=1.
 */
import * as mysql from "mysql2/promise"
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { setTimeout as sleep } from "node:timers/promises"
import { spareTcpPort } from "./services.js"

/** Where a tool is: on PATH (a Nix shell), or in /usr/sbin (Debian's server binaries); undefined if neither. */
export const locate = (tool: string): string | undefined => {
  try {
    return execFileSync("sh", ["-c", `command -v ${tool} || (test -x /usr/sbin/${tool} && echo /usr/sbin/${tool})`], {
      encoding: "utf8"
    }).trim() || undefined
  } catch {
    return undefined
  }
}

/** The tools a private server needs (plus `extra`) that are not installed; warns, or throws under REQUIRE_SERVICES=1. */
export const missingTools = (what: string, extra: ReadonlyArray<string> = []): ReadonlyArray<string> => {
  const missing = ["mariadbd", "mariadb-install-db", ...extra].filter((tool) => locate(tool) === undefined)
  if (missing.length > 0) {
    if (process.env.REQUIRE_SERVICES === "1") throw new Error(`REQUIRE_SERVICES=1 but ${missing.join(", ")} missing`)
    console.warn(`\n!!! SKIPPING ${what}: ${missing.join(", ")} not installed\n`)
  }
  return missing
}

export interface PrivateMariadb {
  readonly dir: string
  readonly port: number
  /** A root connection; `options` adds to it (TLS, say). */
  readonly admin: (options?: mysql.ConnectionOptions) => Promise<mysql.Connection>
  readonly stop: () => Promise<void>
}

/**
 * Starts a server on a fresh data directory, with the options `setup` returns (given the server's own
 * folder, where it may write files such as certificates) added to its command line; creates `database`
 * and waits until it answers. `connection` is how a root connection reaches it (TLS, say).
 */
export const startPrivateMariadb = async (
  database: string,
  setup: (dir: string) => ReadonlyArray<string> = () => [],
  connection: mysql.ConnectionOptions = {}
): Promise<PrivateMariadb> => {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tt-mariadb-"))
  const port = spareTcpPort()
  const admin = (options: mysql.ConnectionOptions = {}) =>
    mysql.createConnection({ host: "127.0.0.1", port, user: "root", ...connection, ...options })
  let server: ChildProcess | undefined
  const stop = async () => {
    if (server !== undefined && server.exitCode === null && server.signalCode === null) {
      const exited = new Promise((resolve) => server!.once("exit", resolve))
      server.kill("SIGTERM")
      await exited
    }
    Fs.rmSync(dir, { recursive: true, force: true })
  }
  try {
    const args = setup(dir)
    const data = Path.join(dir, "data")
    execFileSync(locate("mariadb-install-db") ?? "mariadb-install-db", [
      "--no-defaults",
      `--datadir=${data}`,
      "--auth-root-authentication-method=normal",
      "--skip-test-db"
    ], { stdio: "ignore" })
    server = spawn(locate("mariadbd") ?? "mariadbd", [
      "--no-defaults",
      `--datadir=${data}`,
      `--port=${port}`,
      "--bind-address=127.0.0.1",
      `--socket=${Path.join(dir, "sock")}`,
      `--pid-file=${Path.join(dir, "pid")}`,
      "--innodb-buffer-pool-size=32M",
      "--skip-log-bin",
      "--user=root",
      ...args
    ], { stdio: "ignore" })
    for (let i = 0;; i++) {
      try {
        const conn = await admin()
        await conn.query(`CREATE DATABASE \`${database}\``)
        await conn.end()
        break
      } catch (error) {
        if (i === 200 || server.exitCode !== null) throw error
        await sleep(100)
      }
    }
  } catch (error) {
    await stop()
    throw error
  }
  return { dir, port, admin, stop }
}
