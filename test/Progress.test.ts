import { describe, expect, it } from "@effect/vitest"
import { Effect, Logger, LogLevel, TestClock } from "effect"
import {
  etaMillis,
  initial,
  logger,
  make,
  type ProgressEvent,
  ProgressEvent as E,
  type ProgressState,
  rate,
  renderPlain,
  renderTty,
  step,
  warmupMillis
} from "../src/Progress.js"

/** Folds timed events into a state: the renderer's whole input. */
const play = (events: ReadonlyArray<readonly [at: number, event: ProgressEvent]>): ProgressState =>
  events.reduce((s, [at, event]) => step(s, event, at), initial("", 0))

const steady = (seconds: number, perSecond: number, total: number | null = 100_000) => {
  const events: Array<readonly [number, ProgressEvent]> = [
    [0, E.Started({ label: "regenerate", base: 0, throttle: undefined })]
  ]
  if (total !== null) events.push([0, E.Total({ total })])
  for (let t = 1; t <= seconds * 10; t++) events.push([t * 100, E.Advanced({ rows: perSecond / 10, batchSize: 1000 })])
  return events
}

describe("progress state", () => {
  it("measures the rate over the recent window", () => {
    const s = play(steady(20, 5000))
    expect(rate(s)).toBeCloseTo(5000, 0)
    expect(s.done).toBe(100_000)
  })

  it("has no ETA during the warm-up, then remaining / rate", () => {
    expect(etaMillis(play(steady(0.5, 5000)))).toBeUndefined()
    expect(warmupMillis).toBeLessThanOrEqual(1000)
    expect(etaMillis(play(steady(1.5, 5000))), "well before the first plain line (3 s)").toBeDefined()
    const s = play(steady(10, 5000))
    // 50,000 done of 100,000 at 5,000 rows/s.
    expect(etaMillis(s)).toBeCloseTo(10_000, -2)
  })

  it("time spent backing off between retries does not count toward the rate", () => {
    const events = steady(10, 5000)
    events.push([10_000, E.Retried({ reason: "database" })])
    // 20 s stuck in retries, then it goes on at the same speed.
    for (let t = 1; t <= 20; t++) events.push([30_000 + t * 100, E.Advanced({ rows: 500, batchSize: 1000 })])
    const s = play(events)
    expect(rate(s)).toBeGreaterThan(4000)
    expect(s.retries).toBe(1)
  })

  it("a run where nothing commits says so, and its rate falls instead of freezing", () => {
    const s = play(steady(6, 5000))
    const at = (millis: number) => step(s, E.Total({ total: 100_000 }), millis)
    // 4 s without a commit: an ordinary pause, nothing said yet.
    expect(renderPlain(at(10_000))).not.toContain("no commit")
    expect(etaMillis(at(10_000))).toBeDefined()
    // 12 s without a commit (a lock wait, say): the line says so, the rate falls, no ETA is promised.
    const stuck = at(18_000)
    expect(renderPlain(stuck)).toContain("no commit for 12s")
    expect(rate(stuck)).toBeLessThan(2500)
    expect(etaMillis(stuck)).toBeUndefined()
    // A commit ends it.
    expect(renderPlain(step(stuck, E.Advanced({ rows: 500, batchSize: 1000 }), 18_100))).not.toContain("no commit")
  })

  it("throttled time counts: the rate is the throttled pace", () => {
    const events: Array<readonly [number, ProgressEvent]> = [
      [0, E.Started({ label: "regenerate", base: 0, throttle: 1000 })],
      [0, E.Total({ total: 20_000 })]
    ]
    // In the pipeline's order: the throttle holds the next page back (900 ms), the batch in flight commits
    // meanwhile, then the throttle lets the page go.
    for (let s = 0; s < 12; s++) {
      events.push([s * 1000 + 50, E.Phase({ phase: "throttled" })])
      events.push([s * 1000 + 100, E.Advanced({ rows: 1000, batchSize: 1000 })])
      events.push([s * 1000 + 950, E.Phase({ phase: "running" })])
    }
    const state = play(events)
    expect(rate(state)).toBeCloseTo(1000, -1)
    expect(etaMillis(state)).toBeCloseTo(8_000, -3)
    // Throughout: while a page is held back, and in the moment between two holds.
    for (const at of [11_100, 11_500, 11_990]) {
      expect(renderTty(step(state, E.Total({ total: 20_000 }), at), 150), `at ${at}`).toContain("throttled")
    }
    // Once the throttle stops biting, the note goes.
    expect(renderTty(step(state, E.Total({ total: 20_000 }), 11_950 + 2_000), 150)).not.toContain("throttled")
  })

  it("a throttle caps the rate the ETA uses", () => {
    const events = steady(10, 5000)
    events[0] = [0, E.Started({ label: "regenerate", base: 0, throttle: 1000 })]
    expect(etaMillis(play(events))).toBeCloseTo(50_000, -3)
  })

  it("a resumed run counts what was done before", () => {
    const s = play([
      [0, E.Started({ label: "regenerate", base: 40_000, throttle: undefined })],
      [0, E.Total({ total: 100_000 })],
      [1000, E.Advanced({ rows: 1000, batchSize: 1000 })]
    ])
    expect(renderPlain(s)).toContain("41000/100000 rows (41.0%)")
  })

  it("a job without a batch size to show (verify) leaves it out", () => {
    const s = play([
      [0, E.Started({ label: "verify", base: 0, throttle: undefined })],
      [0, E.Total({ total: 2000 })],
      [1000, E.Advanced({ rows: 1000 })],
      [2000, E.Advanced({ rows: 1000 })]
    ])
    expect(renderPlain(s)).toMatch(/^verify: 2000\/2000 rows \(100\.0%\), .* retries 0$/)
    expect(renderTty(s, 120)).not.toContain("batch")
  })

  it("without a total, shows the key space estimate", () => {
    const events = steady(5, 1000, null)
    events.push([5000, E.Estimate({ fraction: 0.25 })])
    const line = renderPlain(play(events))
    expect(line).toContain("5000 rows (~25.0%)")
    expect(line).not.toMatch(/\d\/\d/)
  })
})

describe("rendering", () => {
  const state = play([...steady(10, 5000), [10_000, E.Retried({ reason: "database" })]])

  it("plain lines have no control characters", () => {
    const line = renderPlain(state)
    expect(line).toMatch(
      /^regenerate: 50000\/100000 rows \(50\.0%\), 5000 rows\/s, elapsed 10s, retries 1, batch 1000, retrying \(database\)$/
    )

    expect(line).not.toMatch(/[\x00-\x1f\x7f]/)
  })

  it("the TTY line has a bar, %, rate, ETA and fits the terminal", () => {
    const line = renderTty(play(steady(10, 5000)), 120)
    expect(line).toContain("50,000/100,000")
    expect(line).toContain("50.0%")
    expect(line).toContain("█")
    expect(line).toContain("5000 rows/s")
    expect(line).toMatch(/ETA \d+s/)
    expect(line.length).toBeLessThan(120)
    // On the narrowest terminals the bar and then the counts give way to %, rate and ETA.
    const running = play(steady(10, 5000))
    expect(renderTty(running, 42)).toMatch(/^50,000\/100,000 50\.0% 5000 rows\/s ETA \d+s$/)
    expect(renderTty(running, 40)).toMatch(/^50\.0% 5000 rows\/s ETA \d+s$/)
    expect(renderTty(state, 40)).toBe("50.0% 5000 rows/s retrying")
  })

  it("on an 80-column terminal keeps counts, %, a bar, rate, ETA, elapsed, retries and the state; the label and batch size give way", () => {
    const line = renderTty(play(steady(10, 5000)), 80)
    expect(line.length).toBeLessThanOrEqual(79)
    expect(line).toMatch(/^50,000\/100,000 50\.0% \[[█░]{10,}\] +5000\/s ETA \d+s +elapsed 10s +retries 0$/)
    // A million tickets, a long run: still all of them.
    const million = renderTty(play(steady(100, 6000, 1_000_000)), 80)
    expect(million).toMatch(/^600,000\/1,000,000 60\.0% \[[█░]{10,}\] +6000\/s ETA \S+ +elapsed 1m40s retries 0$/)
    // While retrying there is no ETA, and the note says why (no "ETA -"); the note's reason gives way
    // before elapsed and retries do.
    const retryingState = play([...steady(10, 5000), [10_000, E.Retried({ reason: "database" })]])
    expect(renderTty(retryingState, 80)).toMatch(
      /^50,000\/100,000 50\.0% \[[█░]{10,}\] +5000\/s elapsed 10s +retries 1 retrying$/
    )
    expect(renderTty(retryingState, 100)).toMatch(
      /^50,000\/100,000 50\.0% \[[█░]{10,}\] +5000\/s elapsed 10s +retries 1 retrying \(database\)$/
    )
    const wide = renderTty(play(steady(10, 5000)), 200)
    expect(wide).toMatch(
      /^regenerate 50,000\/100,000 50\.0% \[[█░]{30}\] +5000 rows\/s {2}ETA \d+s +elapsed 10s +retries 0 {2}batch 1000$/
    )
    // Without a total (no bar), the extras stay while they fit.
    expect(renderTty(play(steady(10, 5000, null)), 100)).toMatch(
      /^regenerate 50,000 +5000 rows\/s {2}ETA - +elapsed 10s +retries 0 {2}batch 1000$/
    )
    // A huge table on 76 columns: the reason goes before the bar or the retries count would.
    const huge = renderTty(play([...steady(10, 5000, 250_000_000), [10_000, E.Retried({ reason: "checkpoint" })]]), 76)
    expect(huge).toMatch(/^50,000\/250,000,000 0\.0% \[░{10,}\] +5000\/s retries 1 retrying$/)
    // The bar keeps its length from one redraw to the next while the layout does.
    const bars = [10, 11, 12, 13].map((seconds) =>
      renderTty(play(steady(seconds, 5000)), 80).match(/\[[█░]+\]/)?.[0].length
    )
    expect(new Set(bars).size).toBe(1)
    // Never an empty bar, even when nothing else fits.
    expect(renderTty(play(steady(10, 5000)), 30)).not.toContain("[]")
  })

  it("a wait for the replicas: said with its reason, no ETA, and its time left out of the rate", () => {
    const waiting = play([
      ...steady(10, 5000),
      [10_000, E.Waiting({ reason: "replica db2:3306 is 14s behind" })],
      [40_000, E.Waiting({ reason: "replica db2:3306 is 11s behind" })]
    ])
    expect(renderPlain(waiting)).toMatch(/, 5000 rows\/s, elapsed 40s, .*, waiting \(replica db2:3306 is 11s behind\)$/)
    expect(etaMillis(waiting)).toBeUndefined()
    expect(renderTty(waiting, 80)).toMatch(/ 5000\/s elapsed 40s +retries 0 waiting$/)
    // Going on again: the rate is the running pace, the 30 s wait not counted.
    const after = play([
      ...steady(10, 5000),
      [10_000, E.Waiting({ reason: "replica db2:3306 is 14s behind" })],
      [40_000, E.Waiting({ reason: undefined })],
      ...steady(2, 5000).slice(2).map(([at, event]) => [40_000 + at, event] as const)
    ])
    expect(rate(after)).toBeCloseTo(5000, -1)
    expect(etaMillis(after)).toBeDefined()
  })

  it("shows throttled and finished states", () => {
    const throttled = play([...steady(5, 1000), [5000, E.Phase({ phase: "throttled" })]])
    expect(renderTty(throttled, 150)).toContain("throttled")
    // Throttled is no reason for no ETA: without a total, "ETA -" stays, as it does running.
    const counting = play([...steady(5, 1000, null), [5000, E.Phase({ phase: "throttled" })]])
    expect(renderTty(counting, 150)).toMatch(/ETA - .*throttled$/)
    const finished = play([...steady(5, 1000), [5000, E.Finished({ outcome: "stopped" })]])
    expect(renderPlain(finished)).toMatch(/, stopped$/)
  })
})

describe("the drawing service", () => {
  it.scoped("plain mode prints a line every few seconds and a last one at the end", () =>
    Effect.gen(function*() {
      const written: Array<string> = []
      const progress = yield* make("plain", { write: (t) => void written.push(t), columns: () => 80 })
      yield* progress.emit(E.Started({ label: "seed tickets", base: 0, throttle: undefined }))
      yield* progress.emit(E.Total({ total: 10 }))
      yield* TestClock.adjust("2 seconds")
      expect(written).toEqual([])
      yield* progress.emit(E.Advanced({ rows: 5, batchSize: 5 }))
      yield* TestClock.adjust("2 seconds")
      expect(written).toHaveLength(1)
      expect(written[0]).toContain("seed tickets: 5/10 rows (50.0%)")
      yield* progress.emit(E.Finished({ outcome: "done" }))
      expect(written).toHaveLength(2)
      expect(written.at(-1)).toMatch(/5\/10 rows .*, done\n$/)
    }))

  it.effect("the TTY line is redrawn in place and the cursor restored when the scope closes", () =>
    Effect.gen(function*() {
      const written: Array<string> = []
      yield* Effect.scoped(Effect.gen(function*() {
        const progress = yield* make("tty", { write: (t) => void written.push(t), columns: () => 100 })
        yield* progress.emit(E.Started({ label: "regenerate", base: 0, throttle: undefined }))
        yield* TestClock.adjust("1 second")
      }))
      expect(written[0]).toBe("\x1b[?25l")
      expect(written.some((t) => t.startsWith("\r\x1b[2K"))).toBe(true)
      expect(written.at(-1)).toBe("\x1b[?25h")
    }))

  it.scoped("a notice is a line of its own: above the live line on a TTY, as is when plain, not at all when silent", () =>
    Effect.gen(function*() {
      const notice = E.Notice({ text: "run abc completed" })
      for (const mode of ["tty", "plain", "silent"] as const) {
        const written: Array<string> = []
        const progress = yield* make(mode, { write: (t) => void written.push(t), columns: () => 100 })
        yield* progress.emit(E.Started({ label: "regenerate", base: 0, throttle: undefined }))
        yield* progress.emit(notice)
        const lines = written.filter((t) => t.includes("run abc completed"))
        expect(lines).toEqual(
          mode === "tty" ? ["\r\x1b[2Krun abc completed\n"] : mode === "plain" ? ["run abc completed\n"] : []
        )
        // On a TTY the live line is drawn again at once, below the notice.
        if (mode === "tty") expect(written.at(-1)).toMatch(/^\r\x1b\[2Kregenerate /)
      }
    }))
})

describe("counts past the total", () => {
  it("tickets inserted into the scope after the count: the total shown grows with what is done", () => {
    const state = play([
      [0, E.Started({ label: "regenerate", base: 0, throttle: undefined })],
      [0, E.Total({ total: 1000 })],
      [500, E.Advanced({ rows: 1200, batchSize: 1000 })]
    ])
    expect(renderPlain(state)).toMatch(/^regenerate: 1200\/1200 rows \(100\.0%\)/)
    expect(renderTty(state, 120)).toContain("1,200/1,200 100.0%")
  })
})

describe("log lines", () => {
  const logged = (mode: "tty" | "plain", log: Effect.Effect<void>) =>
    Effect.gen(function*() {
      const lines: Array<string> = []
      const sink = { write: (text: string) => void lines.push(text), columns: () => 80 }
      yield* log.pipe(
        Effect.provide(Logger.replace(Logger.defaultLogger, logger(mode, sink))),
        Logger.withMinimumLogLevel(LogLevel.Debug)
      )
      return lines
    })

  it.effect("a warning is a `warning:` line like the notices, clearing a live progress line first", () =>
    Effect.gen(function*() {
      expect(yield* logged("plain", Effect.logWarning("the lock was taken back"))).toEqual([
        "warning: the lock was taken back\n"
      ])
      expect(yield* logged("tty", Effect.logWarning("the lock was taken back"))).toEqual([
        "\r\x1b[2Kwarning: the lock was taken back\n"
      ])
      expect(yield* logged("plain", Effect.logInfo("plain words"))).toEqual(["plain words\n"])
    }))

  it.effect("a debug line carries its time and level", () =>
    Effect.gen(function*() {
      const [line] = yield* logged("plain", Effect.logDebug("written 3 times"))
      expect(line).toMatch(/^\[\d{4}-\d\d-\d\dT[\d:.]+Z\] debug: written 3 times\n$/)
    }))
})
