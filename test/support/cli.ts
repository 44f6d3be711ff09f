/**
 * Runs the built CLI (dist/main.js) as a user would: a child process with its own environment.
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

export const root = Path.resolve(Path.dirname(fileURLToPath(import.meta.url)), "..", "..")
export const mainJs = Path.join(root, "dist", "main.js")

export interface CliResult {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
}

export interface CliOptions {
  readonly env?: Record<string, string | undefined>
  readonly cwd?: string
  readonly timeoutMs?: number
  /** Runs it as this user (through runuser: the test runs as root). */
  readonly asUser?: string | undefined
}

/** Environment for the CLI: the test's variables only (no DATABASE_URL/REDIS_URL leaking from the shell). */
const childEnv = (env: Record<string, string | undefined> = {}) => {
  const base: Record<string, string> = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !["DATABASE_URL", "REDIS_URL", "REDIS_PREFIX"].includes(k)) base[k] = v
  }
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) delete base[k]
    else base[k] = v
  }
  return base
}

/** Starts the CLI; the caller decides when to signal it. */
export const spawnCli = (args: ReadonlyArray<string>, options: CliOptions = {}) => {
  const command = [process.execPath, mainJs, ...args]
  const [file, ...rest] = options.asUser === undefined ? command : ["runuser", "-u", options.asUser, "--", ...command]
  const child: ChildProcess = spawn(file!, rest, {
    cwd: options.cwd ?? root,
    env: childEnv(options.env),
    stdio: ["ignore", "pipe", "pipe"]
  })
  let stdout = ""
  let stderr = ""
  child.stdout!.on("data", (chunk) => (stdout += chunk))
  child.stderr!.on("data", (chunk) => (stderr += chunk))
  const result = new Promise<CliResult>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`CLI timed out: ${args.join(" ")}\n${stderr}`))
    }, options.timeoutMs ?? 300_000)
    child.on("error", reject)
    child.on("close", (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr })
    })
  })
  return { child, result, output: () => ({ stdout, stderr }) }
}

/** Runs the CLI to completion. */
export const runCli = (args: ReadonlyArray<string>, options: CliOptions = {}): Promise<CliResult> =>
  spawnCli(args, options).result
