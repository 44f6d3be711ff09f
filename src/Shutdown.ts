/**
 * The first SIGINT/SIGTERM as a stop request. While a graceful section runs (a regeneration), the signal
 * does not interrupt the program: the section sees the request, finishes what it has in flight and ends,
 * so that whatever happens while it winds down — a failure included — is reported like any other outcome.
 * Outside such a section the signal interrupts the program as usual. main.ts owns the signal handlers.
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
