/**
 * A private redis-server on a spare port (with a password), to stop, restart or configure as the machine's
 * own Redis must not be.
 */
import { Redis } from "ioredis"
import { type ChildProcess, spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { setTimeout as sleep } from "node:timers/promises"
import { spareTcpPort } from "./services.js"

/** The private servers' data directories, removed by `removePrivateRedisDirs` (in the file's `afterAll`). */
const dirs: Array<string> = []

export const removePrivateRedisDirs = () => {
  for (const dir of dirs.splice(0)) Fs.rmSync(dir, { recursive: true, force: true })
}

/**
 * With an append-only file unless `persist` is false (then a restart loses every key, as the machine's own
 * Redis would), a password unless `requirePassword` is false; `args` are further redis-server options.
 */
export const privateRedis = (
  { args = [], persist = true, requirePassword = true }: {
    persist?: boolean
    requirePassword?: boolean
    args?: Array<string>
  } = {}
) => {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tt-redis-"))
  dirs.push(dir)
  const port = spareTcpPort()
  const password = requirePassword ? `rp-${randomBytes(6).toString("hex")}` : ""
  let process: ChildProcess | undefined
  const client = () => {
    const c = new Redis({ port, password, maxRetriesPerRequest: 1, lazyConnect: true })
    c.on("error", () => {})
    return c
  }
  const start = async () => {
    process = spawn("redis-server", [
      "--port",
      String(port),
      "--bind",
      "127.0.0.1",
      ...(requirePassword ? ["--requirepass", password] : []),
      "--dir",
      dir,
      ...(persist ? ["--appendonly", "yes", "--appendfsync", "always"] : ["--appendonly", "no"]),
      "--save",
      "",
      ...args
    ], { stdio: "ignore" })
    for (let i = 0; i < 100 && process.exitCode === null; i++) {
      const c = client()
      try {
        await c.connect()
        await c.ping()
        return
      } catch {
        await sleep(50)
      } finally {
        c.disconnect()
      }
    }
    throw new Error("the private redis-server did not start")
  }
  const stop = async () => {
    if (process === undefined || process.exitCode !== null || process.signalCode !== null) return
    const exited = new Promise((resolve) => process?.once("exit", resolve))
    process.kill("SIGTERM") // redis-server shuts down cleanly on SIGTERM, flushing its append-only file
    await exited
  }
  const url = requirePassword ? `redis://:${password}@127.0.0.1:${port}` : `redis://127.0.0.1:${port}`
  return { url, password, port, start, stop, client, dir }
}
