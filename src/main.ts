#!/usr/bin/env node
/**
 * The entry point and the only place an Effect is run: composes the platform layer, renders failures as
 * one line, and maps the outcome to the exit code (0 done, 1 failed, 2 bad usage, 130/143 interrupted).
 */
import * as ValidationError from "@effect/cli/ValidationError"
import * as NodeContext from "@effect/platform-node/NodeContext"
import { makeRunMain } from "@effect/platform/Runtime"
import * as Cause from "effect/Cause"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Fs from "node:fs"
import * as Cli from "./Cli.js"
import { exitCodeOf, isAppError } from "./Domain.js"
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

const runMain = makeRunMain(({ fiber, teardown }) => {
  const keepAlive = setInterval(() => {}, 2 ** 31 - 1)
  const onSignal = (name: "SIGINT" | "SIGTERM") => () => {
    if (signal === undefined) {
      signal = name
      if (!shutdown.request()) fiber.unsafeInterruptAsFork(fiber.id())
      return
    }
    if (process.stderr.isTTY) process.stderr.write("\x1b[?25h\n")
    process.exit(name === "SIGTERM" ? 143 : 130)
  }
  const onSigint = onSignal("SIGINT")
  const onSigterm = onSignal("SIGTERM")
  process.on("SIGINT", onSigint)
  process.on("SIGTERM", onSigterm)
  fiber.addObserver((exit) => {
    clearInterval(keepAlive)
    // Done: a signal while Node winds down (stdout draining) gets Node's default, an immediate exit.
    if (signal === undefined) {
      process.off("SIGINT", onSigint)
      process.off("SIGTERM", onSigterm)
    }
    // A clean exit lets Node end by itself, after stdout (a --json summary, say) has drained.
    teardown(exit, (code) => (code === 0 ? undefined : process.exit(code)))
  })
})

const report = (cause: Cause.Cause<unknown>) =>
  Effect.gen(function*() {
    if (Cause.isInterruptedOnly(cause)) return
    const failure = Cause.failureOption(cause)
    if (Option.isSome(failure) && ValidationError.isValidationError(failure.value)) return
    if (Option.isSome(failure) && isAppError(failure.value)) {
      yield* Console.error(`error: ${failure.value.message}`)
    } else {
      yield* Console.error(`internal error: ${Cause.squash(cause)}`)
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
  Effect.provide(Logger.replace(Logger.defaultLogger, Logger.prettyLogger({ stderr: true }))),
  Effect.provide(Shutdown.layer(shutdown)),
  Effect.provide(NodeContext.layer)
)

runMain(program, {
  disableErrorReporting: true,
  disablePrettyLogger: true,
  teardown: (exit, onExit) => onExit(exitCode(exit))
})
