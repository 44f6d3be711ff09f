#!/usr/bin/env node
/**
 * The entry point and the only place an Effect is run: composes the platform layer, renders failures as
 * one line, and maps the outcome to the exit code (0 done, 1 failed, 2 bad usage, 130/143 interrupted).
 */
import * as ValidationError from "@effect/cli/ValidationError"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Cause from "effect/Cause"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Fs from "node:fs"
import * as Cli from "./Cli.js"
import { exitCodeOf, isAppError } from "./Domain.js"
import * as Progress from "./Progress.js"
import * as Shutdown from "./Shutdown.js"

const version = (): string => {
  try {
    const pkg: unknown = JSON.parse(Fs.readFileSync(new URL("../package.json", import.meta.url), "utf8"))
    return typeof pkg === "object" && pkg !== null && "version" in pkg ? String(pkg.version) : "0.0.0"
  } catch {
    return "0.0.0"
  }
}

// Signals. The first one: while a regeneration runs it is a stop request (the run lets its batches in
// flight commit, records the checkpoint and ends, exit 130/143); anywhere else it interrupts the program.
// Which signal it was decides the exit code (130 for SIGINT, 143 for SIGTERM). A second signal exits at
// once — the checkpoint is still correct, as it only ever moves after a commit — with the terminal's cursor
// restored (the live progress line hides it).
const shutdown = Shutdown.make()
let signal: "SIGINT" | "SIGTERM" | undefined
/** Whether the first signal was a stop request (a graceful section had it), not an interruption. */
let stopping = false

const report = (cause: Cause.Cause<unknown>) =>
  Effect.gen(function*() {
    if (Cause.isInterruptedOnly(cause)) return
    const failure = Cause.failureOption(cause)
    if (Option.isSome(failure) && ValidationError.isValidationError(failure.value)) return
    if (Option.isSome(failure) && isAppError(failure.value)) {
      yield* Console.error(`error: ${failure.value.message}`)
    } else {
      // A defect is a bug of ours: one line too (its first), the rest with --log-level debug.
      const first = String(Cause.squash(cause)).split("\n").find((line) => line.trim() !== "") ?? "unknown"
      yield* Console.error(`internal error: ${first.trim()} (rerun with --log-level debug for detail)`)
    }
    // The failure is rendered outside the command, where its --log-level no longer applies: honour it here.
    if (/(^| )--log-level[ =](debug|trace|all)( |$)/.test(process.argv.slice(2).join(" "))) {
      yield* Console.error(Cause.pretty(cause, { renderErrorCause: true }))
    }
  })

const exitCode = (exit: Exit.Exit<unknown, unknown>): number => {
  if (Exit.isSuccess(exit)) return 0
  if (Cause.isInterruptedOnly(exit.cause)) return signal === "SIGTERM" ? 143 : 130
  const failure = Cause.failureOption(exit.cause)
  if (Option.isSome(failure) && ValidationError.isValidationError(failure.value)) return 2
  if (Option.isSome(failure) && isAppError(failure.value)) return exitCodeOf(failure.value)
  return 1
}

const program = Cli.run(version())(process.argv).pipe(
  Effect.tapErrorCause(report),
  Effect.provide(Logger.replace(Logger.defaultLogger, Progress.logger(Progress.detectMode()))),
  Effect.provide(Shutdown.layer(shutdown)),
  Effect.provide(NodeContext.layer)
)

NodeRuntime.runMain(program, {
  disableErrorReporting: true,
  disablePrettyLogger: true,
  teardown: (exit, onExit) => onExit(exitCode(exit))
})

// The runtime has just registered its own listeners, which interrupt the program: take them over, and
// call them only when no graceful section takes the signal. (Running the program through our own
// makeRunMain instead cost some 50 MB of peak RSS in the bench, for reasons not found.)
for (const name of ["SIGINT", "SIGTERM"] as const) {
  const interrupt = process.listeners(name)
  for (const listener of interrupt) process.off(name, listener)
  process.on(name, () => {
    if (signal === undefined) {
      signal = name
      stopping = shutdown.request()
      if (!stopping) { for (const listener of interrupt) listener(name) }
      return
    }
    if (process.stderr.isTTY) process.stderr.write("\x1b[?25h\n")
    // A run that was stopping has its checkpoint at its last recorded commit; the batches in flight, perhaps
    // committed, lie above it for the resume to redo.
    const running = stopping && process.argv.slice(2).includes("regenerate")
    process.stderr.write(
      running
        ? `stopped at once (a second signal): the checkpoint is at the last recorded commit; resume with: ` +
          `${Cli.resumeCommand(process.argv, process.cwd())}\n`
        : "stopped at once (a second signal)\n"
    )
    process.exit(name === "SIGTERM" ? 143 : 130)
  })
}
