/**
 * Polling with back-off: one tick at a time, the base interval while ticks succeed, doubled
 * after each failure up to a cap, and no timer at all while paused (the sidebar is hidden).
 * Pure TypeScript (timers are injectable), so jest checks the schedule with fake timers.
 */

export interface IPollerOptions {
  /** Milliseconds between ticks while they succeed. */
  interval: number;
  /** Most milliseconds between ticks after failures. */
  maxInterval: number;
  /** Called after every tick: the error (null on success) and the delay to the next. */
  onTick?: (error: unknown | null, nextDelay: number) => void;
}

type Timers = {
  setTimeout: (fn: () => void, ms: number) => unknown;
  clearTimeout: (handle: unknown) => void;
};

const defaultTimers: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: handle => clearTimeout(handle as ReturnType<typeof setTimeout>)
};

export class BackoffPoller {
  constructor(
    private tick: () => Promise<void>,
    options: IPollerOptions,
    private timers: Timers = defaultTimers
  ) {
    this.options = { ...options };
    this.delay = options.interval;
  }

  /** Consecutive failed ticks. */
  get failures(): number {
    return this._failures;
  }

  /** Milliseconds to the next scheduled tick (after the one in flight). */
  get nextDelay(): number {
    return this.delay;
  }

  get paused(): boolean {
    return this._paused;
  }

  get disposed(): boolean {
    return this._disposed;
  }

  /** Change the rates (e.g. from the settings); takes effect from the next tick. */
  configure(interval: number, maxInterval: number): void {
    this.options.interval = interval;
    this.options.maxInterval = Math.max(interval, maxInterval);
    if (this._failures === 0) {
      this.delay = interval;
    }
  }

  /** Run a tick now (coalesced with one in flight) and restart the schedule from it. */
  async refresh(): Promise<void> {
    if (this._disposed) {
      return;
    }
    this.clear();
    if (this.inFlight) {
      return this.inFlight;
    }
    this.inFlight = this.run();
    try {
      await this.inFlight;
    } finally {
      this.inFlight = null;
    }
  }

  /** Stop scheduling (a tick in flight finishes but schedules nothing). */
  pause(): void {
    this._paused = true;
    this.clear();
  }

  /** Resume with an immediate tick, unless already running. */
  resume(): void {
    if (!this._paused || this._disposed) {
      return;
    }
    this._paused = false;
    void this.refresh();
  }

  dispose(): void {
    this._disposed = true;
    this.clear();
  }

  private async run(): Promise<void> {
    let error: unknown | null = null;
    try {
      await this.tick();
      this._failures = 0;
      this.delay = this.options.interval;
    } catch (err) {
      error = err;
      this._failures += 1;
      this.delay = Math.min(
        this.options.interval * 2 ** this._failures,
        this.options.maxInterval
      );
    }
    if (!this._paused && !this._disposed) {
      this.handle = this.timers.setTimeout(() => {
        this.handle = null;
        void this.refresh();
      }, this.delay);
    }
    this.options.onTick?.(error, this.delay);
  }

  private clear(): void {
    if (this.handle !== null) {
      this.timers.clearTimeout(this.handle);
      this.handle = null;
    }
  }

  private options: IPollerOptions;
  private delay: number;
  private handle: unknown = null;
  private inFlight: Promise<void> | null = null;
  private _failures = 0;
  private _paused = false;
  private _disposed = false;
}
