/**
 * The first SIGINT/SIGTERM as a stop request. While a graceful section runs (a regeneration), the signal
 * does not interrupt the program: the section sees the request, finishes what it has in flight and ends,
 * so that whatever happens while it winds down — a failure included — is reported like any other outcome.
 * Outside such a section the signal interrupts the program as usual. main.ts owns the signal handlers.
 * `graceful` runs a job (a regeneration, a seed) as such a section.
 */
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as Layer from "effect/Layer"

export interface ShutdownService {
  /** Completes when a stop has been requested. */
  readonly requested: Effect.Effect<void>
  readonly isRequested: Effect.Effect<boolean>
  /** Runs `effect` as a graceful section: meanwhile the first signal is a stop request, not an interruption. */
  readonly graceful: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
}

export class Shutdown extends Context.Tag("Shutdown")<Shutdown, ShutdownService>() {}

export interface Controller {
  readonly service: ShutdownService
  /** Requests a stop; false (nothing done) when no graceful section is running. */
  readonly request: () => boolean
}

/** A shutdown state for the process (or a test), driven by `request`. */
export const make = (): Controller => {
  const stop = Deferred.unsafeMake<void>(FiberId.none)
  let sections = 0
  return {
    service: {
      requested: Deferred.await(stop),
      isRequested: Deferred.isDone(stop),
      graceful: (effect) =>
        Effect.acquireUseRelease(
          Effect.sync(() => sections++),
          () => effect,
          () => Effect.sync(() => sections--)
        )
    },
    request: () => {
      if (sections === 0) return false
      Deferred.unsafeDone(stop, Exit.void)
      return true
    }
  }
}

export const layer = (controller: Controller): Layer.Layer<Shutdown> => Layer.succeed(Shutdown, controller.service)

/**
 * Runs `run` as a graceful section: the first Ctrl-C or SIGTERM turns `stopRequested` true (and runs
 * `onStop`), `run` finishes what it has in flight and returns, and when `stopped` says it did stop early
 * the outcome is an interruption (exit 130/143); a run the stop came too late for ends as it ended, and
 * one that failed winding down is reported like any failure. A second signal is not caught here: the
 * process exits at once (a checkpoint is still correct, as it only ever moves after a commit).
 */
export const graceful = <A, E, R>(
  run: (stopRequested: Effect.Effect<boolean>) => Effect.Effect<A, E, R>,
  stopped: (result: A) => boolean,
  onStop: Effect.Effect<void> = Effect.void
): Effect.Effect<A, E, R | Shutdown> =>
  Effect.gen(function*() {
    const shutdown = yield* Shutdown
    const result = yield* Effect.scoped(Effect.gen(function*() {
      yield* Effect.forkScoped(Effect.zipRight(shutdown.requested, onStop))
      return yield* shutdown.graceful(run(shutdown.isRequested))
    }))
    return stopped(result) ? yield* Effect.interrupt : result
  })
