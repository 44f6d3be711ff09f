/**
 * Progress of a long job (a regeneration run, a seeder), fed by events. The state is a pure reduction of
 * the events and the lines are pure renderings of the state, so both are tested without a terminal; the
 * service only decides when and where to draw: a line redrawn in place on a TTY, a plain line every few
 * seconds when piped, nothing in JSON mode.
 */
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Ref from "effect/Ref"

export type Phase = "running" | "retrying" | "throttled" | "stopping"

/** How long "throttled" stays up after the throttle last held a batch back (it holds one every batch). */
const throttledShowMillis = 1_500

export type ProgressEvent = Data.TaggedEnum<{
  /** A job starts; `base` rows were done before this process (a resumed run). */
  Started: { readonly label: string; readonly base: number; readonly throttle: number | undefined }
  /** The number of rows in scope is known. */
  Total: { readonly total: number }
  /** Without a total: the fraction of the key space already behind the cursor. */
  Estimate: { readonly fraction: number }
  /** Rows committed; `batchSize`, the batch size in force, for jobs where the operator chooses one. */
  Advanced: { readonly rows: number; readonly batchSize?: number }
  Retried: { readonly reason: string }
  Phase: { readonly phase: Phase }
  /** Batches wait (for the replicas): why, or undefined once they go on. */
  Waiting: { readonly reason: string | undefined }
  /** A line for the operator, printed once above the live line. */
  Notice: { readonly text: string }
  Finished: { readonly outcome: string }
}>
export const ProgressEvent = Data.taggedEnum<ProgressEvent>()

interface Sample {
  readonly at: number
  readonly done: number
  readonly active: number
}

export interface ProgressState {
  readonly label: string
  readonly startedAt: number
  readonly now: number
  readonly base: number
  readonly done: number
  readonly total: number | undefined
  readonly fraction: number | undefined
  readonly retries: number
  readonly lastRetry: string | undefined
  readonly batchSize: number | undefined
  readonly throttle: number | undefined
  /** running, retrying (until a batch commits again) or stopping; throttling is tracked on its own. */
  readonly phase: Exclude<Phase, "throttled">
  /** When the throttle last held a batch back (or is holding one: `throttling`). */
  readonly throttledAt: number | undefined
  readonly throttling: boolean
  /** Why the batches wait (a replica behind), while they do: a pause, like a retry's back-off. */
  readonly waiting: string | undefined
  /** Milliseconds spent working: time backing off between retries does not count toward the rate. */
  readonly active: number
  readonly samples: ReadonlyArray<Sample>
  /** Set once the job ended: "done", "stopped". */
  readonly outcome: string | undefined
}

/** How far back the rate looks. */
const rateWindowMillis = 10_000
/** No ETA before this much time (and two commits): the first batches warm caches and pools. */
export const warmupMillis = 1_000
/** Running this long without a commit shows as "no commit for …" (a lock wait, a slow server). */
const stallMillis = 5_000

export const initial = (label: string, now: number): ProgressState => ({
  label,
  startedAt: now,
  now,
  base: 0,
  done: 0,
  total: undefined,
  fraction: undefined,
  retries: 0,
  lastRetry: undefined,
  batchSize: undefined,
  throttle: undefined,
  phase: "running",
  throttledAt: undefined,
  throttling: false,
  waiting: undefined,
  active: 0,
  samples: [{ at: now, done: 0, active: 0 }],
  outcome: undefined
})

/** Moves the clock of a state to `now`, accruing active time. */
const tick = (state: ProgressState, now: number): ProgressState => {
  const elapsed = Math.max(0, now - state.now)
  // A throttle sets the real pace, so throttled time counts; a retry's back-off or a wait for the replicas
  // is a pause, so it does not.
  const paused = state.phase === "retrying" || state.waiting !== undefined
  return { ...state, now, active: state.active + (paused ? 0 : elapsed) }
}

const sampled = (state: ProgressState): ProgressState => {
  const samples = [...state.samples, { at: state.now, done: state.done, active: state.active }]
  const cutoff = state.now - rateWindowMillis
  // Keep one sample at or before the cutoff so the window is always full once it can be.
  let first = 0
  while (first + 1 < samples.length && samples[first + 1]!.at <= cutoff) first++
  return { ...state, samples: samples.slice(first) }
}

/** The state after `event` at time `now`. */
export const step = (state: ProgressState, event: ProgressEvent, now: number): ProgressState => {
  const s = tick(state, now)
  switch (event._tag) {
    case "Started":
      return { ...initial(event.label, now), base: event.base, throttle: event.throttle }
    case "Total":
      return { ...s, total: event.total }
    case "Estimate":
      return { ...s, fraction: event.fraction }
    case "Advanced":
      return sampled({
        ...s,
        done: s.done + event.rows,
        batchSize: event.batchSize ?? s.batchSize,
        phase: s.phase === "retrying" ? "running" : s.phase
      })
    case "Retried":
      return {
        ...s,
        retries: s.retries + 1,
        lastRetry: event.reason,
        phase: s.phase === "stopping" ? "stopping" : "retrying"
      }
    case "Phase":
      // The throttle reports "throttled" when it holds a batch back and "running" when it lets it go.
      return event.phase === "throttled" || (event.phase === "running" && s.throttling)
        ? { ...s, throttling: event.phase === "throttled", throttledAt: now }
        : { ...s, phase: s.phase === "stopping" ? "stopping" : event.phase }
    case "Waiting":
      return { ...s, waiting: event.reason }
    case "Finished":
      return sampled({ ...s, outcome: event.outcome })
    case "Notice":
      return s
  }
}

/**
 * Rows per second over the recent window of running time, up to now: time without a commit lowers it,
 * time backing off between retries does not count. Undefined until something committed over a measurable
 * time (at the end, over the whole run if that was short).
 */
export const rate = (state: ProgressState): number | undefined => {
  const first = state.samples[0]
  const last = state.samples[state.samples.length - 1]
  if (first === undefined || last === undefined || last === first) return undefined
  // Up to the last commit; once nothing has committed for a while, up to now, so that a stall shows.
  const end = stalledMillis(state) === undefined ? last : state
  const active = end.active - first.active
  if (active >= 500) return ((end.done - first.done) * 1000) / active
  return state.outcome !== undefined && state.active > 0 ? (state.done * 1000) / state.active : undefined
}

/** How long the run has gone without a commit while running (not throttled, retrying, waiting or stopping). */
const stalledMillis = (state: ProgressState): number | undefined => {
  const last = state.samples[state.samples.length - 1]
  if (
    last === undefined || state.outcome !== undefined || state.phase !== "running" || isThrottled(state) ||
    state.waiting !== undefined
  ) {
    return undefined
  }
  const quiet = state.now - last.at
  return quiet >= stallMillis ? quiet : undefined
}

/** Rows done, counting those done before a resume. */
const doneOf = (state: ProgressState): number => state.base + state.done

/** Fraction complete, from the total or (without one) from the key space estimate. */
const fractionOf = (state: ProgressState): number | undefined =>
  state.total !== undefined
    ? (state.total === 0 ? 1 : Math.min(1, doneOf(state) / state.total))
    : state.fraction

/** Time left at the recent rate; none while warming up, retrying, waiting, stopping or stalled, or once ended. */
export const etaMillis = (state: ProgressState): number | undefined => {
  const r = rate(state)
  const steady = state.phase === "running" && state.outcome === undefined && state.waiting === undefined &&
    stalledMillis(state) === undefined
  if (r === undefined || r <= 0 || !steady || state.samples.length < 3) return undefined
  if (state.now - state.startedAt < warmupMillis) return undefined
  const effective = state.throttle === undefined ? r : Math.min(r, state.throttle)
  if (state.total !== undefined) return (Math.max(0, state.total - doneOf(state)) * 1000) / effective
  const fraction = state.fraction
  if (fraction === undefined || fraction < 0.001) return undefined
  const estimatedTotal = doneOf(state) / fraction
  return (Math.max(0, estimatedTotal - doneOf(state)) * 1000) / effective
}

export const formatDuration = (millis: number): string => {
  const total = Math.round(millis / 1000)
  const h = Math.floor(total / 3600)
  const m = Math.floor((total % 3600) / 60)
  const sec = total % 60
  return h > 0 ? `${h}h${String(m).padStart(2, "0")}m` : m > 0 ? `${m}m${String(sec).padStart(2, "0")}s` : `${sec}s`
}

const formatRate = (r: number | undefined): string =>
  r === undefined ? "-" : r >= 10_000 ? `${(r / 1000).toFixed(1)}k` : `${Math.round(r)}`

const withSeparators = (n: number): string => n.toLocaleString("en-US")

const percent = (fraction: number | undefined, estimated: boolean): string =>
  fraction === undefined ? "" : `${estimated ? "~" : ""}${(fraction * 100).toFixed(1)}%`

/** Whether the throttle is holding the run back (or did a moment ago: it holds each batch briefly). */
const isThrottled = (state: ProgressState): boolean =>
  state.throttling || (state.throttledAt !== undefined && state.now - state.throttledAt < throttledShowMillis)

/** What the run is doing besides running: stopping, retrying (why), throttled, stalled; or its outcome. */
const note = (state: ProgressState): string => {
  const stalled = stalledMillis(state)
  return state.outcome !== undefined
    ? state.outcome
    : state.phase === "stopping"
    ? "stopping"
    : state.phase === "retrying"
    ? `retrying (${state.lastRetry ?? ""})`
    : state.waiting !== undefined
    ? `waiting (${state.waiting})`
    : isThrottled(state)
    ? "throttled"
    : stalled !== undefined
    ? `no commit for ${formatDuration(stalled)}`
    : ""
}

/**
 * "done/total" (or "done" without a total). Rows the site inserted into the scope after it was counted can
 * take the count past the total: the total shown grows with it, never below what is done.
 */
const countsOf = (state: ProgressState, format: (n: number) => string): string => {
  const done = doneOf(state)
  return state.total === undefined ? format(done) : `${format(done)}/${format(Math.max(state.total, done))}`
}

/** The plain line printed every few seconds when stderr is not a terminal (no control characters). */
export const renderPlain = (state: ProgressState): string => {
  const fraction = fractionOf(state)
  const eta = etaMillis(state)
  return [
    `${state.label}: ${countsOf(state, String)} rows`,
    fraction === undefined ? "" : ` (${percent(fraction, state.total === undefined)})`,
    `, ${formatRate(rate(state))} rows/s`,
    eta === undefined ? "" : `, ETA ${formatDuration(eta)}`,
    `, elapsed ${formatDuration(state.now - state.startedAt)}`,
    `, retries ${state.retries}`,
    state.batchSize === undefined ? "" : `, batch ${state.batchSize}`,
    note(state) === "" ? "" : `, ${note(state)}`
  ].join("")
}

const bar = (fraction: number, width: number): string => {
  const filled = Math.round(fraction * width)
  return `[${"█".repeat(filled)}${"░".repeat(width - filled)}] `
}

/** The narrowest bar worth drawing, and the widest. */
const barWidths = { min: 10, max: 30 } as const

/**
 * The live line for a terminal of `columns` columns (redrawn in place; never wider than the terminal).
 * The first of these layouts that fits beside a bar of at least 10 cells is drawn, its bar widened into
 * what is left (up to 30): label, counts, %, rate, ETA, elapsed, retries and batch size; then without the
 * batch size; then without the label and in short form (`34.6k/s`, single spaces); then without elapsed;
 * then without retries. The state note comes whole ("retrying (database)") while elapsed and retries
 * still fit beside it, else without its reason; where the note says why there is no ETA, "ETA -" is left
 * out. On the narrowest terminals the bar, then the counts give way to %, rate, ETA and the state. Values
 * are padded, so that the bar keeps its length from one redraw to the next.
 */
export const renderTty = (state: ProgressState, columns: number): string => {
  const fraction = fractionOf(state)
  const eta = etaMillis(state)
  const counts = countsOf(state, withSeparators)
  const shown = percent(fraction, state.total === undefined)
  const width = columns - 1
  const rateText = formatRate(rate(state)).padStart(5)
  const full = note(state)
  // No ETA once the run is over; none, either, where the state note says why there is none: retrying,
  // stopping, waiting, stalled (not throttled: the throttle's pace makes the ETA).
  const noteSaysWhy = state.phase !== "running" || state.waiting !== undefined || stalledMillis(state) !== undefined
  const etaText = state.outcome !== undefined || (eta === undefined && noteSaysWhy)
    ? ""
    : `ETA ${(eta === undefined ? "-" : formatDuration(eta)).padEnd(5)}`
  const elapsed = `elapsed ${formatDuration(state.now - state.startedAt).padEnd(5)}`
  const retries = `retries ${state.retries}`
  const batch = state.batchSize === undefined ? "" : `batch ${state.batchSize}`
  const wideHead = `${state.label} ${counts} ${shown} `
  const shortHead = `${counts} ${shown} `
  const join = (parts: ReadonlyArray<string>, separator: string) => parts.filter((p) => p !== "").join(separator)
  const layouts = (text: string) =>
    [
      [wideHead, join([`${rateText} rows/s`, etaText, elapsed, retries, batch, text], "  ")],
      [wideHead, join([`${rateText} rows/s`, etaText, elapsed, retries, text], "  ")],
      [shortHead, join([`${rateText}/s`, etaText, elapsed, retries, text], " ")],
      [shortHead, join([`${rateText}/s`, etaText, retries, text], " ")],
      [shortHead, join([`${rateText}/s`, etaText, text], " ")]
    ] as const
  const withoutReason = full.replace(/ \(.*\)$/, "")
  // The note's reason ("(database)") gives way before elapsed and retries, which the line promises, do.
  const candidates = [...layouts(full).slice(0, 3), ...layouts(withoutReason)]
  // Room left for a bar ("[", "] " and its cells) beside a layout; without a total there is no bar.
  const barRoom = ([head, tail]: readonly [string, string]) => width - head.length - tail.length - 3
  const needed = fraction === undefined ? -3 : barWidths.min
  const chosen = candidates.find((layout) => barRoom(layout) >= needed)
  if (chosen !== undefined) {
    const drawn = fraction === undefined ? "" : bar(fraction, Math.min(barWidths.max, barRoom(chosen)))
    return `${chosen[0]}${drawn}${chosen[1]}`.trimEnd()
  }
  // Too narrow for a bar: %, rate, ETA and the state, with the counts while they fit.
  const essential = join([`${formatRate(rate(state))} rows/s`, etaText.trim(), withoutReason], " ")
  const narrow = [`${shortHead}${essential}`, `${shown === "" ? "" : `${shown} `}${essential}`]
    .map((line) => line.trimEnd())
    .find((line) => line.length <= width)
  return narrow ?? `${shown} ${essential}`.trim().slice(0, Math.max(0, width))
}

export interface ProgressService {
  readonly emit: (event: ProgressEvent) => Effect.Effect<void>
}

export class Progress extends Context.Tag("Progress")<Progress, ProgressService>() {}

export type ProgressMode = "tty" | "plain" | "silent"

export interface Sink {
  readonly write: (text: string) => void
  readonly columns: () => number
}

const stderrSink: Sink = {
  write: (text) => void process.stderr.write(text),
  // Some pseudo-terminals report 0 columns: fall back to $COLUMNS, then 100.
  columns: () => process.stderr.columns || Number(process.env.COLUMNS) || 100
}

const underCi = (value = process.env.CI): boolean =>
  value !== undefined && value !== "" && value !== "0" && value.toLowerCase() !== "false"

/** `tty` when stderr is a terminal (and not under CI), else `plain`. */
export const detectMode = (): ProgressMode =>
  process.stderr.isTTY === true && !underCi() && process.env.TERM !== "dumb" ? "tty" : "plain"

const plainEveryMillis = 3_000
const ttyEveryMillis = 200

const CLEAR_LINE = "\r\x1b[2K"
const HIDE_CURSOR = "\x1b[?25l"
const SHOW_CURSOR = "\x1b[?25h"

/**
 * Log lines in the tool's own form, on stderr: `warning: …` as the notices are (a live progress line is
 * cleared first; it is drawn again at its next tick); at debug levels with the time and level.
 */
export const logger = (mode: ProgressMode, sink: Sink = stderrSink) =>
  Logger.make(({ cause, date, logLevel, message }) => {
    const text = (Array.isArray(message) ? message : [message]).map(String).join(" ")
    const label = LogLevel.greaterThanEqual(logLevel, LogLevel.Error)
      ? "error: "
      : LogLevel.greaterThanEqual(logLevel, LogLevel.Warning)
      ? "warning: "
      : LogLevel.lessThan(logLevel, LogLevel.Info)
      ? `[${date.toISOString()}] ${logLevel.label.toLowerCase()}: `
      : ""
    const detail = Cause.isEmpty(cause) ? "" : `\n${Cause.pretty(cause)}`
    sink.write(`${mode === "tty" ? CLEAR_LINE : ""}${label}${text}${detail}\n`)
  })

/**
 * The drawing service. The ticker is a scoped fiber and the terminal is restored (line finished, cursor
 * shown) when the scope closes, on every exit path including interruption.
 */
export const make = (mode: ProgressMode, sink: Sink = stderrSink) =>
  Effect.gen(function*() {
    const now = yield* Clock.currentTimeMillis
    const ref = yield* Ref.make(initial("", now))
    const started = yield* Ref.make(false)

    const current = Effect.zipWith(Ref.get(ref), Clock.currentTimeMillis, (s, t) => tick(s, t))

    const draw = (final: boolean) =>
      Effect.gen(function*() {
        if (!(yield* Ref.get(started))) return
        const state = yield* current
        if (mode === "tty") {
          sink.write(`${CLEAR_LINE}${renderTty(state, sink.columns())}${final ? "\n" : ""}`)
        } else if (mode === "plain") {
          sink.write(`${renderPlain(state)}\n`)
        }
      })

    const emit = (event: ProgressEvent) =>
      Effect.gen(function*() {
        const t = yield* Clock.currentTimeMillis
        yield* Ref.update(ref, (s) => step(s, event, t))
        if (event._tag === "Notice" && mode !== "silent") {
          sink.write(`${mode === "tty" ? CLEAR_LINE : ""}${event.text}\n`)
          yield* draw(false)
        }
        if (event._tag === "Started") yield* Ref.set(started, true)
        if (event._tag === "Finished") {
          yield* draw(true)
          yield* Ref.set(started, false)
        }
      })

    if (mode !== "silent") {
      if (mode === "tty") sink.write(HIDE_CURSOR)
      yield* Effect.addFinalizer(() =>
        Effect.gen(function*() {
          if (mode === "tty") {
            yield* draw(true)
            sink.write(SHOW_CURSOR)
          }
        })
      )
      const every = mode === "tty" ? ttyEveryMillis : plainEveryMillis
      yield* draw(false).pipe(
        Effect.delay(every),
        Effect.forever,
        Effect.forkScoped
      )
    }
    return Progress.of({ emit })
  })

export const layer = (mode: ProgressMode): Layer.Layer<Progress> => Layer.scoped(Progress, make(mode))
