import { BackoffPoller } from '../poller';

/** Let the poller's awaited tick settle under fake timers. */
async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) {
    await Promise.resolve();
  }
}

describe('BackoffPoller', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  function make(results: Array<'ok' | 'fail'>) {
    const calls: number[] = [];
    const ticks: Array<[unknown, number]> = [];
    let i = 0;
    const poller = new BackoffPoller(
      async () => {
        calls.push(Date.now());
        const r = results[Math.min(i++, results.length - 1)];
        if (r === 'fail') {
          throw new Error('down');
        }
      },
      { interval: 1000, maxInterval: 5000, onTick: (err, next) => ticks.push([err, next]) }
    );
    return { poller, calls, ticks };
  }

  it('polls at the base interval while ticks succeed', async () => {
    const { poller, calls } = make(['ok']);
    await poller.refresh();
    for (let k = 0; k < 3; k++) {
      jest.advanceTimersByTime(1000);
      await flush();
    }
    expect(calls.length).toBe(4);
    expect(poller.nextDelay).toBe(1000);
    poller.dispose();
  });

  it('doubles the delay on failures up to the cap, and resets on success', async () => {
    const { poller, ticks } = make(['fail', 'fail', 'fail', 'fail', 'ok']);
    await poller.refresh();
    expect(poller.nextDelay).toBe(2000);
    for (const wait of [2000, 4000, 5000, 5000]) {
      jest.advanceTimersByTime(wait - 1);
      await flush();
      const before = ticks.length;
      jest.advanceTimersByTime(1);
      await flush();
      expect(ticks.length).toBe(before + 1);
    }
    expect(ticks.map(t => t[1])).toEqual([2000, 4000, 5000, 5000, 1000]);
    expect((ticks[0][0] as Error).message).toBe('down');
    expect(ticks[4][0]).toBeNull();
    expect(poller.failures).toBe(0);
    poller.dispose();
  });

  it('schedules nothing while paused and ticks at once on resume', async () => {
    const { poller, calls } = make(['ok']);
    await poller.refresh();
    poller.pause();
    jest.advanceTimersByTime(10_000);
    await flush();
    expect(calls.length).toBe(1);
    poller.resume();
    await flush();
    expect(calls.length).toBe(2);
    poller.dispose();
    jest.advanceTimersByTime(10_000);
    await flush();
    expect(calls.length).toBe(2);
  });

  it('coalesces refreshes while a tick is in flight', async () => {
    let release: () => void = () => undefined;
    let count = 0;
    const poller = new BackoffPoller(
      () => {
        count++;
        return new Promise<void>(resolve => (release = resolve));
      },
      { interval: 1000, maxInterval: 1000 }
    );
    const a = poller.refresh();
    const b = poller.refresh();
    release();
    await Promise.all([a, b]);
    expect(count).toBe(1);
    poller.dispose();
  });

  it('applies new rates from the next tick', async () => {
    const { poller, calls } = make(['ok']);
    await poller.refresh();
    poller.configure(3000, 10_000);
    jest.advanceTimersByTime(1000); // the tick already scheduled keeps its delay
    await flush();
    expect(calls.length).toBe(2);
    jest.advanceTimersByTime(2999);
    await flush();
    expect(calls.length).toBe(2);
    jest.advanceTimersByTime(1);
    await flush();
    expect(calls.length).toBe(3);
    poller.dispose();
  });
});
