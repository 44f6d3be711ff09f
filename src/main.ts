#!/usr/bin/env node
/**
 * The entry point and the only place an Effect is run: composes the platform layer, renders failures as
 * one line, and maps the outcome to the exit code (0 done, 1 failed, 2 bad usage, 130/143 interrupted).
 */
import * as Fs from "node:fs"

// Signals. The first one: while a regeneration runs it is a stop request (the run lets its batches in
// flight commit, records the checkpoint and ends, exit 130/143); anywhere else it interrupts the program.
// Which signal it was decides the exit code (130 for SIGINT, 143 for SIGTERM). A second signal exits at
// once — the checkpoint is still correct, as it only ever moves after a commit — with the terminal's cursor
// restored (the live progress line hides it). The handlers are in place before the program is loaded
// (about half a second): a signal meanwhile ends the process at once, saying so.
let signal: "SIGINT" | "SIGTERM" | undefined
/** Whether the first signal was a stop request (a graceful section had it), not an interruption. */
let stopping = false
/** Once the program is loaded: what the first signal does. */
let onFirstSignal: ((name: "SIGINT" | "SIGTERM") => void) | undefined = undefined
/** Once the program is loaded: whether the command has printed its one JSON object. */
let printedJson = (): boolean => false
/** Once the program is loaded: the command that resumes a stopped run. */
let resumeCommand = (): string => "regenerate --resume"

const args = process.argv.slice(2)
const regenerating = args.includes("regenerate") && !args.includes("--dry-run")

/** A signal's last words: a line on stderr, and under --json the command's one object unless it printed it. */
const exitAtOnce = (name: "SIGINT" | "SIGTERM", message: string, known: Record<string, unknown> = {}) => {
  if (process.stderr.isTTY) process.stderr.write("\x1b[?25h\n")
  process.stderr.write(`${message}\n`)
  if (args.includes("--json") && !printedJson()) {
    process.stdout.write(
      `${
        JSON.stringify(
          regenerating ? { status: "interrupted", ...known, message } : { ok: false, error: "Interrupted", message }
        )
      }\n`
    )
  }
  process.exit(name === "SIGTERM" ? 143 : 130)
}

for (const name of ["SIGINT", "SIGTERM"] as const) {
  process.on(name, () => {
    if (signal === undefined) {
      signal = name
      if (onFirstSignal !== undefined) return onFirstSignal(name)
      return exitAtOnce(name, "stopped by a signal while starting: nothing was changed", { rotated: 0 })
    }
    // A run that was stopping has its checkpoint at its last recorded commit; the batches in flight, perhaps
    // committed, lie above it for the resume to redo.
    exitAtOnce(
      name,
      stopping && regenerating
        ? `stopped at once (a second signal): the checkpoint is at the last recorded commit; resume with: ` +
          resumeCommand()
        : "stopped at once (a second signal)"
    )
  })
}

const [
  ValidationError,
  NodeContext,
  NodeRuntime,
  Cause,
  Console,
  Effect,
  Exit,
  Logger,
  Option,
  Cli,
  Domain,
  Progress,
  Shutdown
] = await Promise.all([
  import("@effect/cli/ValidationError"),
  import("@effect/platform-node/NodeContext"),
  import("@effect/platform-node/NodeRuntime"),
  import("effect/Cause"),
  import("effect/Console"),
  import("effect/Effect"),
  import("effect/Exit"),
  import("effect/Logger"),
  import("effect/Option"),
  import("./Cli.js"),
  import("./Domain.js"),
  import("./Progress.js"),
  import("./Shutdown.js")
])

const version = (): string => {
  try {
    const pkg: unknown = JSON.parse(Fs.readFileSync(new URL("../package.json", import.meta.url), "utf8"))
    return typeof pkg === "object" && pkg !== null && "version" in pkg ? String(pkg.version) : "0.0.0"
  } catch {
    return "0.0.0"
  }
}

const shutdown = Shutdown.make()

const report = (cause: import("effect/Cause").Cause<unknown>) =>
  Effect.gen(function*() {
    if (Cause.isInterruptedOnly(cause)) return
    const failure = Cause.failureOption(cause)
    if (Option.isSome(failure) && ValidationError.isValidationError(failure.value)) return
    if (Option.isSome(failure) && Domain.isAppError(failure.value)) {
      yield* Console.error(`error: ${failure.value.message}`)
    } else {
      // A defect is a bug of ours: one line too (its first), the rest with --log-level debug.
      const first = String(Cause.squash(cause)).split("\n").find((line) => line.trim() !== "") ?? "unknown"
      yield* Console.error(`internal error: ${first.trim()} (rerun with --log-level debug for detail)`)
    }
    // The failure is rendered outside the command, where its --log-level no longer applies: honour it here.
    if (/(^| )--log-level[ =](debug|trace|all)( |$)/.test(args.join(" "))) {
      yield* Console.error(Cause.pretty(cause, { renderErrorCause: true }))
    }
  })

const exitCode = (exit: import("effect/Exit").Exit<unknown, unknown>): number => {
  if (Exit.isSuccess(exit)) return 0
  if (Cause.isInterruptedOnly(exit.cause)) return signal === "SIGTERM" ? 143 : 130
  const failure = Cause.failureOption(exit.cause)
  if (Option.isSome(failure) && ValidationError.isValidationError(failure.value)) return 2
  if (Option.isSome(failure) && Domain.isAppError(failure.value)) return Domain.exitCodeOf(failure.value)
  return 1
}

const program = Cli.run(version())(process.argv).pipe(
  Effect.tapErrorCause(report),
  Effect.provide(Logger.replace(Logger.defaultLogger, Progress.logger(Progress.detectMode()))),
  Effect.provide(Shutdown.layer(shutdown)),
  Effect.provide(NodeContext.layer)
)

const ours = new Set(["SIGINT", "SIGTERM"].flatMap((name) => process.listeners(name as "SIGINT")))

NodeRuntime.runMain(program, {
  disableErrorReporting: true,
  disablePrettyLogger: true,
  teardown: (exit, onExit) => onExit(exitCode(exit))
})

// The runtime has just registered its own listeners, which interrupt the program: take them over, and
// call them only when no graceful section takes the signal. (Running the program through our own
// makeRunMain instead cost some 50 MB of peak RSS in the bench, for reasons not found.)
const interrupts = new Map<string, ReadonlyArray<NodeJS.SignalsListener>>()
for (const name of ["SIGINT", "SIGTERM"] as const) {
  const theirs = process.listeners(name).filter((listener) => !ours.has(listener))
  for (const listener of theirs) process.off(name, listener)
  interrupts.set(name, theirs)
}
printedJson = Cli.printedJson
resumeCommand = () => Cli.resumeCommand(process.argv, process.cwd())
onFirstSignal = (name) => {
  stopping = shutdown.request()
  if (!stopping) { for (const listener of interrupts.get(name) ?? []) listener(name) }
}
